#!/usr/bin/env python3
"""Publish a synthetic Porter bundle, in cnab-to-oci's wire format, to a loopback registry.

Used by `make demo` and `make bench`; the test suite has its own builder in Rust.

    publish-sample-bundle.py http://localhost:5001 demo/porter-hello v0.2.0 \
        [--layers 2] [--layer-size 1048576] [--components 1] [--component-layers 1] \
        [--component-layer-size 65536] [--seed 1] [--cacert CA.pem] [--user USER:PASS]

The bundle: an OCI index (no mediaType member, as cnab-to-oci writes it) holding the CNAB config
manifest (config application/vnd.cnab.config.v1+json, "layers": null), the invocation image and
N component images, each a Docker schema2 manifest whose layers are random bytes. Layers are
generated and streamed in 1 MiB pieces, so large layers never sit in memory. Prints the index
digest. Standard library only.
"""
import argparse
import base64
import hashlib
import http.client
import json
import random
import ssl
import sys
import urllib.parse

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
PIECE = 1 << 20


def compact(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


class Registry:
    def __init__(self, base, cacert=None, user=None):
        self.url = urllib.parse.urlparse(base)
        if self.url.hostname not in ("localhost", "127.0.0.1", "::1"):
            sys.exit("publish-sample-bundle: loopback registries only")
        self.context = None
        if self.url.scheme == "https":
            self.context = ssl.create_default_context(cafile=cacert)
            if not cacert:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self.headers = {}
        if user:
            self.headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()

    def request(self, method, path, body=None, headers=None):
        if path.startswith("http"):
            parsed = urllib.parse.urlparse(path)
            path = parsed.path + ("?" + parsed.query if parsed.query else "")
        all_headers = dict(self.headers)
        all_headers.update(headers or {})
        if self.context:
            conn = http.client.HTTPSConnection(self.url.hostname, self.url.port, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.url.hostname, self.url.port)
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def push_blob(self, repo, digest, size, body):
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 200:
            return
        status, headers, data = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        if status != 202:
            sys.exit(f"starting an upload failed: {status} {data[:200]!r}")
        location = headers["location"]
        separator = "&" if "?" in location else "?"
        status, _, data = self.request(
            "PUT", f"{location}{separator}digest={digest}", body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        if status != 201:
            sys.exit(f"uploading {digest} failed: {status} {data[:200]!r}")

    def push_bytes(self, repo, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.push_blob(repo, digest, len(data), data)
        return {"digest": digest, "size": len(data)}

    def push_manifest(self, repo, reference, data, media_type):
        status, _, body = self.request("PUT", f"/v2/{repo}/manifests/{reference}", body=data,
                                       headers={"Content-Type": media_type})
        if status != 201:
            sys.exit(f"pushing manifest {reference} failed: {status} {body[:300]!r}")
        return "sha256:" + hashlib.sha256(data).hexdigest()


def random_layer(seed, size):
    """A generator of `size` pseudo-random bytes and, computed first, their digest."""
    def pieces():
        rng = random.Random(seed)
        remaining = size
        while remaining > 0:
            n = min(PIECE, remaining)
            yield rng.randbytes(n)
            remaining -= n
    digest = hashlib.sha256()
    for piece in pieces():
        digest.update(piece)
    return "sha256:" + digest.hexdigest(), pieces


def push_image(registry, repo, seed, layers, layer_size, label):
    layer_descriptors = []
    for i in range(layers):
        digest, pieces = random_layer(seed * 1000 + i, layer_size)
        registry.push_blob(repo, digest, layer_size, pieces())
        layer_descriptors.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                  "size": layer_size, "digest": digest})
    config = registry.push_bytes(repo, compact({
        "architecture": "amd64", "os": "linux", "config": {"Labels": {"sample": label}},
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descriptors]}}))
    manifest = compact({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                   "size": config["size"], "digest": config["digest"]},
                        "layers": layer_descriptors})
    digest = registry.push_manifest(repo, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest,
                                    DOCKER_MANIFEST)
    return {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(manifest)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("repo")
    parser.add_argument("tag")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--layer-size", type=int, default=1 << 20)
    parser.add_argument("--components", type=int, default=1)
    parser.add_argument("--component-layers", type=int, default=1)
    parser.add_argument("--component-layer-size", type=int, default=64 << 10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cacert")
    parser.add_argument("--user")
    args = parser.parse_args()

    registry = Registry(args.base, args.cacert, args.user)
    name = args.repo.split("/")[-1]
    invocation = push_image(registry, args.repo, args.seed, args.layers, args.layer_size, "invocation")
    components = {}
    for c in range(args.components):
        components[f"component-{c}"] = push_image(registry, args.repo, args.seed * 100 + c + 1,
                                                  args.component_layers, args.component_layer_size,
                                                  f"component-{c}")
    source_repo = f"example.com/{args.repo}"
    bundle = {
        "schemaVersion": "1.2.0", "name": name, "version": args.tag.lstrip("v"),
        "description": "A sample bundle published by bundlecopy's publish-sample-bundle.py",
        "invocationImages": [{"imageType": "docker", "image": f"{source_repo}-installer:{args.tag}",
                              "contentDigest": invocation["digest"], "size": invocation["size"],
                              "mediaType": DOCKER_MANIFEST}],
        "images": {n: {"imageType": "docker", "image": f"{source_repo}-{n}:{args.tag}", "description": n,
                       "contentDigest": d["digest"], "size": d["size"], "mediaType": DOCKER_MANIFEST}
                   for n, d in components.items()},
        "custom": {"sh.porter": {"manifestDigest": "0" * 64, "version": "v1.6.1"}},
    }
    bundle_blob = registry.push_bytes(args.repo, json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode())
    config = compact({"schemaVersion": 2, "config": {"mediaType": "application/vnd.cnab.config.v1+json",
                                                     "digest": bundle_blob["digest"], "size": bundle_blob["size"]},
                      "layers": None})
    config_digest = registry.push_manifest(args.repo, "sha256:" + hashlib.sha256(config).hexdigest(), config,
                                           OCI_MANIFEST)
    manifests = [{"mediaType": OCI_MANIFEST, "digest": config_digest, "size": len(config),
                  "annotations": {"io.cnab.manifest.type": "config"}},
                 dict(invocation, annotations={"io.cnab.manifest.type": "invocation"})]
    for n, d in components.items():
        manifests.append(dict(d, annotations={"io.cnab.component.name": n, "io.cnab.manifest.type": "component"}))
    index = compact({"schemaVersion": 2, "manifests": manifests,
                     "annotations": {"io.cnab.runtime_version": "v1.2.0",
                                     "org.opencontainers.artifactType": "application/vnd.cnab.manifest.v1",
                                     "org.opencontainers.image.title": name,
                                     "org.opencontainers.image.version": bundle["version"]}})
    digest = registry.push_manifest(args.repo, args.tag, index, OCI_INDEX)
    print(digest)


if __name__ == "__main__":
    main()
