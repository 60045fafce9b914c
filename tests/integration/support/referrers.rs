//! Referrers for tests: OCI 1.1 artifacts that name a `subject` (a Notation-style signature, an
//! SBOM, a signature on the SBOM), written the way their tools write them, and the referrers tag
//! schema's `sha256-<hex>` index for registries without the referrers API. Written with the
//! harness's own registry client, independent of the engine.

use serde_json::{Value, json};

use super::client::RegistryClient;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Notation's signature artifact type.
pub const NOTARY_SIGNATURE: &str = "application/vnd.cncf.notary.signature";
/// An SPDX SBOM.
pub const SPDX_SBOM: &str = "application/spdx+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// A manifest as a subject or index entry names it.
#[derive(Debug, Clone)]
pub struct Subject {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Subject {
    pub fn new(media_type: &str, digest: &str, bytes: &[u8]) -> Subject {
        Subject {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size: bytes.len() as u64,
        }
    }
}

/// An artifact pushed to a registry.
#[derive(Debug, Clone)]
pub struct PushedArtifact {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub artifact_type: String,
    /// Its descriptor, as a referrers index lists it.
    pub descriptor: Value,
}

impl PushedArtifact {
    /// This artifact as the subject of another.
    pub fn as_subject(&self) -> Subject {
        Subject::new(OCI_MANIFEST, &self.digest, &self.bytes)
    }
}

/// Push an artifact of `artifact_type` carrying `payload` (layer type `layer_type`) that refers
/// to `subject`, by digest (no tag), as Notation and `oras attach` do.
pub async fn push_artifact(
    client: &RegistryClient,
    repo: &str,
    artifact_type: &str,
    layer_type: &str,
    payload: &[u8],
    subject: &Subject,
) -> PushedArtifact {
    let config = client.put_blob(repo, b"{}").await;
    let layer = client.put_blob(repo, payload).await;
    let created = "2026-12-01T00:00:00Z";
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": layer_type, "digest": layer, "size": payload.len()}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {"org.opencontainers.image.created": created},
    });
    let bytes = serde_json::to_vec(&manifest).expect("serialize an artifact manifest");
    let digest = super::sha256_digest(&bytes);
    client
        .put_manifest(repo, &digest, &bytes, OCI_MANIFEST)
        .await;
    PushedArtifact {
        descriptor: json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": bytes.len(),
            "artifactType": artifact_type,
            "annotations": {"org.opencontainers.image.created": created},
        }),
        digest,
        bytes,
        artifact_type: artifact_type.to_owned(),
    }
}

/// A Notation-style signature of `subject` (a JWS envelope as its payload).
pub async fn push_notation_signature(
    client: &RegistryClient,
    repo: &str,
    subject: &Subject,
    seed: &str,
) -> PushedArtifact {
    let envelope = json!({"payload": seed, "protected": "e30", "signature": "c2ln"}).to_string();
    push_artifact(
        client,
        repo,
        NOTARY_SIGNATURE,
        "application/jose+json",
        envelope.as_bytes(),
        subject,
    )
    .await
}

/// An SPDX SBOM of `subject`.
pub async fn push_sbom(
    client: &RegistryClient,
    repo: &str,
    subject: &Subject,
    seed: &str,
) -> PushedArtifact {
    let sbom = json!({"spdxVersion": "SPDX-2.3", "name": seed, "packages": []}).to_string();
    push_artifact(client, repo, SPDX_SBOM, SPDX_SBOM, sbom.as_bytes(), subject).await
}

/// The referrers tag schema: add `artifacts` to the `sha256-<hex>` index of `subject` (as a
/// client does on a registry without the referrers API). Returns the index bytes written.
pub async fn add_to_tag_index(
    client: &RegistryClient,
    repo: &str,
    subject: &str,
    artifacts: &[&PushedArtifact],
) -> Vec<u8> {
    let tag = schema_tag(subject);
    let mut index = match client.get_manifest(repo, &tag).await {
        Some((bytes, _, _)) => serde_json::from_slice(&bytes).expect("the tag holds JSON"),
        None => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("the tag holds an index");
    for artifact in artifacts {
        manifests.push(artifact.descriptor.clone());
    }
    let bytes = serde_json::to_vec(&index).expect("serialize the index");
    client.put_manifest(repo, &tag, &bytes, OCI_INDEX).await;
    bytes
}

/// `sha256:<hex>` → `sha256-<hex>`.
pub fn schema_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The digests a `sha256-<hex>` index lists, in order (empty when there is no such tag).
pub async fn tag_index_digests(client: &RegistryClient, repo: &str, subject: &str) -> Vec<String> {
    let Some((bytes, _, _)) = client.get_manifest(repo, &schema_tag(subject)).await else {
        return Vec::new();
    };
    let index: Value = serde_json::from_slice(&bytes).expect("the tag holds JSON");
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["digest"].as_str().unwrap_or_default().to_owned())
        .collect()
}
