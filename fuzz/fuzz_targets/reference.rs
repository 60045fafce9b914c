//! `Reference::parse` and Porter's destination derivation on arbitrary text: no panic, and a
//! parsed reference re-parses to itself.
#![no_main]

use bundlecopy_engine::reference::{Reference, derive_destination};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line is the source, the rest the destination (so both sides get mutated).
    let (source_text, destination_text) = text.split_once('\n').unwrap_or((text, text));
    let Ok(source) = Reference::parse(source_text) else {
        return;
    };
    let printed = source.to_string();
    let reparsed = Reference::parse(&printed)
        .unwrap_or_else(|e| panic!("{printed:?} (from {source_text:?}) does not re-parse: {e}"));
    assert_eq!(reparsed, source, "{printed:?} re-parses differently");
    let _ = (source.api_host(), source.familiar(), source.familiar_name());
    let _ = source.last_path_segment();
    if let Ok(destination) = derive_destination(&source, destination_text) {
        // A derived destination always names where to write: a tag or a digest.
        assert!(
            destination.tag().is_some() || destination.digest().is_some(),
            "{destination} has neither tag nor digest"
        );
    }
});
