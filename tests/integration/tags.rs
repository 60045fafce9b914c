//! `bundlecopy tags` against a real registry: a repository holding releases, pre-releases,
//! `v`-prefixed, non-semver and `latest` tags, and the exact set each selection chooses — the
//! same selection code a BundleMirror uses. Also 1,000 tags listed page by page (the registry's
//! `Link` headers, 100 at a time) and the errors for bad input.
//! `cargo nextest run --test integration tags_`

use crate::support::{
    BundleSpec, Fault, FaultProxy, PathKind, RegistryKind, Rule, TestRegistry, push_bundle, run_cli,
};

const TAGS: [&str; 12] = [
    "0.9.0",
    "1.0.0",
    "v1.1.0",
    "1.2.0-rc.1",
    "1.2.0",
    "1.10.0",
    "2.0.0-beta.1",
    "2.0.0",
    "latest",
    "1.2",
    "stable",
    "v3.0.0",
];

/// Tags `repo` (which holds the pushed bundle) with every tag of `tags`, 16 at a time.
async fn tag_all(registry: &TestRegistry, repo: &str, tags: impl IntoIterator<Item = String>) {
    use futures_util::StreamExt;
    let pushed = push_bundle(registry, repo, "seed", &BundleSpec::new("app", "1.0.0")).await;
    let client = registry.client();
    let (client, pushed) = (&client, &pushed);
    futures_util::stream::iter(tags)
        .for_each_concurrent(16, |tag| async move {
            client
                .put_manifest(repo, &tag, &pushed.index_bytes, &pushed.index_media_type)
                .await;
        })
        .await;
}

fn tags_cli(args: &[&str]) -> (i32, Vec<String>, String) {
    let (code, stdout, stderr) = run_cli(args);
    (code, stdout.lines().map(str::to_string).collect(), stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_selections_choose_exactly_what_a_mirror_would() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    tag_all(&registry, "vendor/app", TAGS.map(String::from)).await;
    let repository = format!("{}/vendor/app", registry.host());
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["--semver", ">=1.0.0 <2.0.0"],
            &["1.10.0", "1.2.0", "v1.1.0", "1.0.0"],
        ),
        (&["--semver", "^1.2"], &["1.10.0", "1.2.0"]),
        (
            &["--semver", ">=1.2.0-rc.0, <1.3.0"],
            &["1.2.0", "1.2.0-rc.1"],
        ),
        (&["--latest", "3"], &["v3.0.0", "2.0.0", "2.0.0-beta.1"]),
        (
            &["--semver", "<2.0.0", "--latest", "2"],
            &["1.10.0", "1.2.0"],
        ),
        (&["--include", "^v"], &["v3.0.0", "v1.1.0"]),
        (&["--include", "^(latest|stable)$"], &["latest", "stable"]),
        (
            &["--exclude", "(rc|beta|latest|stable|seed)"],
            &[
                "v3.0.0", "2.0.0", "1.10.0", "1.2.0", "v1.1.0", "1.0.0", "0.9.0", "1.2",
            ],
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["tags", repository.as_str()];
        args.extend_from_slice(flags);
        let (code, chosen, stderr) = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            move || tags_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{flags:?}: {stderr}");
        assert_eq!(chosen, expected, "{flags:?}");
    }
    // Without a selection: every tag, highest version first is not promised, all are there.
    let (code, all, stderr) = tokio::task::spawn_blocking({
        let repository = repository.clone();
        move || tags_cli(&["tags", &repository, "--output", "json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&all.join("\n")).unwrap();
    let mut names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["tag"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = TAGS.iter().copied().chain(["seed"]).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let v3 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["tag"] == "v3.0.0")
        .unwrap();
    assert_eq!(v3["version"], "3.0.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_of_a_big_repository_are_listed_page_by_page() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    tag_all(&registry, "big/app", (0..1000).map(|i| format!("1.0.{i}"))).await;
    // distribution 2.8 answers in one page; the proxy pages as the distribution API allows.
    let proxy = FaultProxy::start(&registry);
    proxy.add_rule(Rule::new(Fault::PaginateTags { page: 100 }).kind(PathKind::Tags));
    let repository = format!("{}/big/app", proxy.host());
    let (code, chosen, stderr) = tokio::task::spawn_blocking({
        let repository = repository.clone();
        move || tags_cli(&["tags", &repository, "--semver", ">=1.0.990"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let expected: Vec<String> = (990..1000).rev().map(|i| format!("1.0.{i}")).collect();
    assert_eq!(chosen, expected);
    let pages: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.kind == PathKind::Tags)
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(pages.len(), 11, "1,001 tags at 100 a page: {pages:?}");
    assert!(pages[0].ends_with("?n=100"), "{pages:?}");
    assert!(
        pages[1..].iter().all(|page| page.contains("last=")),
        "each next page follows the Link: {pages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_bad_input_is_one_clear_line() {
    let registry = TestRegistry::start(RegistryKind::Plain).await;
    tag_all(&registry, "vendor/app", ["1.0.0".to_string()]).await;
    let host = registry.host();
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec![
                format!("{host}/vendor/app"),
                "--semver".into(),
                "banana".into(),
            ],
            "--semver: \"banana\" is not a semver range",
        ),
        (
            vec![format!("{host}/vendor/app"), "--include".into(), "(".into()],
            "--include: \"(\" is not a valid regular expression",
        ),
        (
            vec![format!("{host}/vendor/app"), "--latest".into(), "0".into()],
            "--latest: must be at least 1",
        ),
        (
            vec![format!("{host}/vendor/app:1.0.0")],
            "names a tag or digest",
        ),
        (vec![format!("{host}/vendor/nothing")], "no such repository"),
    ];
    for (args, expected) in cases {
        let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let mut all = vec!["tags".to_string()];
            all.extend(args);
            run_cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "{expected}: {stdout}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
