//! The bundle parsers (index, manifest, bundle.json) and the index ↔ bundle.json matching on
//! arbitrary bytes: no panic.
#![no_main]

use bundlecopy_engine::bundle::{
    BundleIndex, BundleJson, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
    Parsed, bundle_images, bundle_json_descriptor, relocation_map,
};
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: [&str; 6] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    "application/json",
    "",
];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the media type the "registry" announced.
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[selector as usize % MEDIA_TYPES.len()];
    let _ = Parsed::parse(bytes, media_type);
    let _ = bundle_json_descriptor(bytes, media_type);
    let bundle_json = BundleJson::parse(bytes);
    if let Ok(index) = BundleIndex::parse(bytes, media_type) {
        assert_eq!(index.manifests.len(), index.roles.len());
        let _ = index.config_descriptor();
        // The same document as bundle.json, and an empty one: matching must not panic either.
        for bundle in [bundle_json.unwrap_or_default(), BundleJson::default()] {
            if let Ok(images) = bundle_images(&index, &bundle) {
                let _ = relocation_map(&images, "registry.example.com/team/app");
            }
        }
    }
});
