//! Docker config parsing (`config.json` and the legacy `.dockercfg`) and credential lookup on
//! arbitrary bytes: no panic, and no error message quotes the input.
#![no_main]

use bundlecopy_engine::credentials::DockerConfig;
use libfuzzer_sys::fuzz_target;

const HOSTS: [(&str, &str); 5] = [
    ("docker.io", "library/ubuntu"),
    ("registry.example.com:5000", "team/app"),
    ("127.0.0.1:5000", "a/b/c"),
    ("[::1]:5000", "x"),
    ("sub.example.com", "team"),
];

fuzz_target!(|data: &[u8]| {
    for parsed in [
        DockerConfig::parse_config_json(data),
        DockerConfig::parse_dockercfg(data),
    ] {
        match parsed {
            Ok(config) => {
                for (registry, repository) in HOSTS {
                    let _ = config.lookup(registry, repository);
                }
                let _ = config.ignored_helpers();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
