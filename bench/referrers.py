#!/usr/bin/env python3
"""What a signed bundle costs over an unsigned one: the same bundle copied by `bundlecopy copy`
with and without signatures, alternating in the same run, counting requests and timing each copy.

    bench/referrers.py [--runs 5] [--rtt-ms 50] [--bin target/release/bundlecopy]

Two loopback `docker-registry` processes (distribution 2.8, no referrers API: the tag schema is
used), access logs on. The bundle is porter-hello-like: an invocation image and two components,
two 1 MiB layers each (`scripts/publish-sample-bundle.py`), published to `hello/unsigned` and to
`hello/signed`. `hello/signed` also carries what a signed Porter bundle does: a cosign signature
of the index (`sha256-<hex>.sig`), a Notation-style signature of the index and an SPDX SBOM of
each of the three images, the last four listed in `sha256-<hex>` indexes — 5 referrers. Each run
copies both to an empty destination (fresh storage each time), in alternating order, then copies
each again (up to date: the repeat that `interval` checks resemble). With `--rtt-ms`, the source
is behind bench/latency_proxy.py. Prints a Markdown table of medians (min–max). Standard library
only; uses bench/bench.py's registry and measurement helpers.
"""
import argparse
import base64
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402  (bench/bench.py: registries, measure(), access-log counting)

REPO_ROOT = HERE.parent
PUBLISHER = REPO_ROOT / "scripts" / "publish-sample-bundle.py"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def publisher():
    spec = importlib.util.spec_from_file_location("publisher", PUBLISHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


def sign(registry, repo, index_digest, image_digests):
    """Add the referrers a signed Porter bundle carries; returns how many."""
    empty = registry.push_bytes(repo, b"{}")

    def artifact(artifact_type, layer_type, payload, subject):
        layer = registry.push_bytes(repo, payload)
        manifest = compact({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", **empty},
            "layers": [{"mediaType": layer_type, **layer}],
            "subject": subject,
        })
        digest = registry.push_manifest(repo, "sha256:" + hashlib.sha256(manifest).hexdigest(),
                                        manifest, OCI_MANIFEST)
        return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                "artifactType": artifact_type}

    def subject(digest):
        status, headers, data = registry.request(
            "GET", f"/v2/{repo}/manifests/{digest}",
            headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"})
        return {"mediaType": headers["content-type"], "digest": digest, "size": len(data)}

    def tag_index(digest, entries):
        index = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
        registry.push_manifest(repo, digest.replace(":", "-", 1), index, OCI_INDEX)

    # cosign's signature of the index: a simple-signing payload under the tag sha256-<hex>.sig.
    payload = compact({"critical": {"identity": {"docker-reference": repo},
                                    "image": {"docker-manifest-digest": index_digest},
                                    "type": "cosign container image signature"}, "optional": None})
    layer = registry.push_bytes(repo, payload)
    config = registry.push_bytes(repo, b'{"architecture":"","os":""}')
    signature = compact({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", **layer,
                    "annotations": {"dev.cosignproject.cosign/signature":
                                    base64.b64encode(b"not a real signature").decode()}}],
    })
    registry.push_manifest(repo, index_digest.replace(":", "-", 1) + ".sig", signature, OCI_MANIFEST)
    notation = artifact("application/vnd.cncf.notary.signature", "application/jose+json",
                        b'{"payload":"e30","signature":"c2ln"}', subject(index_digest))
    tag_index(index_digest, [notation])
    for n, digest in enumerate(image_digests):
        sbom = artifact("application/spdx+json", "application/spdx+json",
                        compact({"spdxVersion": "SPDX-2.3", "name": f"image-{n}"}), subject(digest))
        tag_index(digest, [sbom])
    return 2 + len(image_digests)


def image_digests(registry, repo, index_digest):
    status, headers, data = registry.request(
        "GET", f"/v2/{repo}/manifests/{index_digest}", headers={"Accept": OCI_INDEX})
    index = json.loads(data)
    return [m["digest"] for m in index["manifests"]
            if m.get("annotations", {}).get("io.cnab.manifest.type") != "config"]


def requests_in(registry, offset):
    return bench.access_log_requests(registry.home / f"{registry.name}.log", offset)


def log_size(registry):
    return (registry.home / f"{registry.name}.log").stat().st_size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rtt-ms", type=float, default=0, help="put the source behind latency_proxy.py")
    parser.add_argument("--workdir", default=str(REPO_ROOT / ".work" / "bench-referrers"))
    parser.add_argument("--bin", default=str(Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
                                             / "release" / "bundlecopy"))
    args = parser.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"missing {args.bin}: cargo build --release")
    bench.become_subreaper()
    home = Path(args.workdir).resolve()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    source = bench.RegistryProcess("source", home, home / "source", access_log=True)
    destination = bench.RegistryProcess("destination", home, home / "destination", access_log=True)
    proxy = None
    try:
        source.start()
        destination.start()
        publish = publisher()
        registry = publish.Registry(f"http://{source.host}")
        digests = {}
        for repo in ("hello/unsigned", "hello/signed"):
            digests[repo] = subprocess.run(
                [sys.executable, str(PUBLISHER), f"http://{source.host}", repo, "v1", "--layers", "2",
                 "--layer-size", str(1 << 20), "--components", "2", "--component-layers", "2",
                 "--component-layer-size", str(1 << 20), "--seed", "7"],
                check=True, capture_output=True, text=True).stdout.strip()
        referrers = sign(registry, "hello/signed", digests["hello/signed"],
                         image_digests(registry, "hello/signed", digests["hello/signed"]))
        source_host = source.host
        if args.rtt_ms:
            proxy = bench.LatencyProxy(home, source, bench.Network(f"{args.rtt_ms:g}"))
            source_host = proxy.host
        empty_config = home / "no-docker-config"
        empty_config.mkdir()
        samples = {}

        def copy(repo, label):
            command = [args.bin, "copy", "--source", f"{source_host}/{repo}:v1",
                       "--destination", f"{destination.host}/{repo}:v1", "--docker-config", str(empty_config)]
            offsets = (log_size(source), log_size(destination))
            result = bench.measure(command)
            if result["exit"] != 0:
                sys.exit(f"copy of {repo} failed: {result['stderr'][-2000:]}")
            sample = {"wall_s": result["wall_s"], "cpu_s": result["cpu_s"],
                      "source_requests": requests_in(source, offsets[0]),
                      "destination_requests": requests_in(destination, offsets[1])}
            samples.setdefault(label, []).append(sample)

        for run in range(args.runs):
            order = ["hello/unsigned", "hello/signed"] if run % 2 == 0 else ["hello/signed", "hello/unsigned"]
            for repo in order:
                destination.reset()
                copy(repo, (repo, "fresh"))
                copy(repo, (repo, "repeat"))
            bench.log(f"run {run + 1}/{args.runs} done")
    finally:
        if proxy:
            proxy.stop()
        source.stop()
        destination.stop()

    def cell(label, key, digits):
        values = [s[key] for s in samples[label]]
        median = statistics.median(values)
        if digits == 0:
            return f"{median:.0f}" if min(values) == max(values) else f"{median:.0f} ({min(values)}–{max(values)})"
        return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"

    network = f"source at {args.rtt_ms:g} ms RTT" if args.rtt_ms else "loopback"
    print(f"\nhello-like bundle (3 images, 2 × 1 MiB layers each), {network}, {args.runs} runs; "
          f"signed = {referrers} referrers\n")
    print("| copy | bundle | wall s | CPU s | source requests | destination requests |")
    print("|---|---|---|---|---|---|")
    for mode in ("fresh", "repeat"):
        for repo in ("hello/unsigned", "hello/signed"):
            label = (repo, mode)
            print(f"| {mode} | {repo.split('/')[1]} | {cell(label, 'wall_s', 3)} | {cell(label, 'cpu_s', 3)} | "
                  f"{cell(label, 'source_requests', 0)} | {cell(label, 'destination_requests', 0)} |")


if __name__ == "__main__":
    main()
