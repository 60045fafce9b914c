//! A bundle signed with a real cosign implementation (the sigstore crate's cosign support, a
//! P-256 key pair made in the test) is copied, and the signature verifies at the destination
//! with the same implementation — and no longer verifies once the copy's signature is tampered
//! with. The registries are real (distribution 2.8, plain HTTP on loopback).
//! `cargo test --test integration signed_`

use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{
    ClientBuilder, Constraint, CosignCapabilities, SignatureLayer, verify_constraints,
};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol, OciReference};

use crate::support::{
    BundleSpec, ImageFormat, PushedBundle, RegistryKind, TestRegistry, push_bundle, run_cli,
};

/// A cosign client for plain-HTTP loopback registries.
fn cosign() -> sigstore::cosign::Client {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    };
    ClientBuilder::default()
        .with_oci_client_config(config)
        .build()
        .expect("a cosign client")
}

fn reference(text: &str) -> OciReference {
    text.parse()
        .unwrap_or_else(|e| panic!("{text} is a reference: {e:?}"))
}

/// `cosign sign --key`: sign the manifest `image` resolves to, and push the signature to its
/// `sha256-<hex>.sig` tag. Returns the public key (PEM).
async fn sign(image: &str) -> String {
    let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()
        .expect("a P-256 key pair");
    let public_key = signer
        .to_sigstore_keypair()
        .expect("the key pair")
        .public_key_to_pem()
        .expect("the public key as PEM");
    let mut client = cosign();
    let image = reference(image);
    let (signature_image, digest) = client
        .triangulate(&image, &Auth::Anonymous)
        .await
        .expect("resolve the image to sign");
    let mut layer = SignatureLayer::new_unsigned(&image, &digest).expect("a payload to sign");
    PrivateKeySigner::new_with_signer(signer)
        .add_constraint(&mut layer)
        .expect("sign the payload");
    client
        .push_signature(None, &Auth::Anonymous, &signature_image, vec![layer])
        .await
        .expect("push the signature");
    public_key
}

/// `cosign verify --key`: the signatures at `image`'s `.sig` tag, checked against the key.
async fn verify(image: &str, public_key: &str) -> Result<(), String> {
    let mut client = cosign();
    let image = reference(image);
    let (signature_image, digest) = client
        .triangulate(&image, &Auth::Anonymous)
        .await
        .map_err(|e| format!("triangulate: {e}"))?;
    let layers = client
        .trusted_signature_layers(&Auth::Anonymous, &digest, &signature_image)
        .await
        .map_err(|e| format!("signature layers: {e}"))?;
    let verifier = PublicKeyVerifier::new(
        public_key.as_bytes(),
        &SigningScheme::ECDSA_P256_SHA256_ASN1,
    )
    .map_err(|e| format!("the public key: {e}"))?;
    let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
    verify_constraints(&layers, constraints.iter()).map_err(|e| {
        format!(
            "{} constraints unsatisfied",
            e.unsatisfied_constraints.len()
        )
    })
}

/// `bundlecopy copy --source SOURCE --destination DESTINATION`, off the runtime; must succeed.
/// Its stderr.
async fn copy_with_cli(source: &str, destination: &str) -> String {
    let args: Vec<String> = vec![
        "copy".into(),
        "--source".into(),
        source.into(),
        "--destination".into(),
        destination.into(),
    ];
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the CLI ran");
    assert_eq!(code, 0, "{source} -> {destination}: {stderr}");
    stderr
}

/// Two plain registries, the hello bundle at the first as `team/hello:v1`, signed with a new
/// key; the public key.
async fn signed_hello() -> (TestRegistry, TestRegistry, PushedBundle, String) {
    bundlecopy_engine::install_crypto_provider();
    let (src, dst) = tokio::join!(
        TestRegistry::start(RegistryKind::Plain),
        TestRegistry::start(RegistryKind::Plain)
    );
    let spec = BundleSpec::new("hello", "0.1.0").with_component("db", ImageFormat::Oci, &[2000]);
    let pushed = push_bundle(&src, "team/hello", "v1", &spec).await;
    let public_key = sign(&pushed.reference).await;
    (src, dst, pushed, public_key)
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_a_cosign_signature_verifies_at_the_destination_and_not_when_tampered() {
    let (_src, dst, pushed, public_key) = signed_hello().await;
    verify(&pushed.reference, &public_key)
        .await
        .expect("the signature verifies at the source");

    let destination = format!("{}/mirror/hello:v1", dst.host());
    let stderr = copy_with_cli(&pushed.reference, &destination).await;
    assert!(stderr.contains("and 1 signatures/attestations"), "{stderr}");
    verify(&destination, &public_key)
        .await
        .expect("the copied signature verifies at the destination");
    let other_key = {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .unwrap();
        signer
            .to_sigstore_keypair()
            .unwrap()
            .public_key_to_pem()
            .unwrap()
    };
    assert!(
        verify(&destination, &other_key).await.is_err(),
        "another key does not verify it"
    );

    // Tamper with the copy: the signature annotation of the destination's .sig manifest.
    let client = dst.client();
    let tag = format!("{}.sig", pushed.index_digest.replacen(':', "-", 1));
    let (bytes, media_type, _) = client
        .get_manifest("mirror/hello", &tag)
        .await
        .expect("the .sig tag was copied under its name");
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let annotation =
        &mut manifest["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"];
    let signature = annotation.as_str().expect("a cosign signature").to_string();
    let mut flipped: Vec<char> = signature.chars().collect();
    flipped[10] = if flipped[10] == 'A' { 'B' } else { 'A' };
    *annotation = serde_json::Value::String(flipped.into_iter().collect());
    let tampered = serde_json::to_vec(&manifest).unwrap();
    client
        .put_manifest("mirror/hello", &tag, &tampered, &media_type)
        .await;
    assert!(
        verify(&destination, &public_key).await.is_err(),
        "a tampered signature does not verify"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_a_cosign_signature_still_verifies_after_an_air_gap() {
    let (_src, dst, pushed, public_key) = signed_hello().await;
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let archive = format!(
        "oci-archive:{}:v1",
        scratch.path().join("hello.tar").display()
    );

    // Export on the connected side, import on the other: the signature travels in the archive
    // under cosign's tag name and verifies where it lands.
    let stderr = copy_with_cli(&pushed.reference, &archive).await;
    assert!(stderr.contains("and 1 signatures/attestations"), "{stderr}");
    let destination = format!("{}/private/hello:v1", dst.host());
    let stderr = copy_with_cli(&archive, &destination).await;
    assert!(stderr.contains("and 1 signatures/attestations"), "{stderr}");
    verify(&destination, &public_key)
        .await
        .expect("the signature verifies after the air gap");
    let tag = format!("{}.sig", pushed.index_digest.replacen(':', "-", 1));
    assert!(
        dst.client()
            .get_manifest("private/hello", &tag)
            .await
            .is_some(),
        "the .sig tag arrived under its name"
    );
}
