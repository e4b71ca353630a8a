#!/usr/bin/env bash
# Build the local control plane's binaries from the Go modules pinned under hack/, and cache them by
# version, so `vibe cluster up` and the tests can start a real Kubernetes control plane without Docker
# and without downloading any release binary.
#
#   hack/k8s/go.mod          kube-apiserver, kube-controller-manager, kube-scheduler, kubectl;
#                            kwok (fake nodes and pods) and helm, on the same k8s.io libraries
#   hack/tools/kine/go.mod   kine (etcd API on SQLite; pure Go with CGO off), on its own: its etcd and
#                            database dependencies would otherwise upgrade the control plane's
#   hack/tools/prometheus/go.mod
#                            prometheus and promtool (the chart's alerts: `promtool test rules` and a
#                            real Prometheus scraping the operator and agent), on their own for the same
#                            reason; built with -tags remove_all_sd (static and file targets only)
#
# Each lands in $VIBE_BIN_DIR/<component>-<version>/ (default ${XDG_CACHE_HOME:-$HOME/.cache}/vibe/bin).
# What is already there is skipped (no network needed then), so re-running is cheap; a half-finished
# build never lands there (it is built in a temporary directory and renamed into place).
#
# Usage: hack/build-cluster.sh [kubernetes|kine|kwok|helm|prometheus ...]   (no argument: all of them)
# Env:   VIBE_BIN_DIR     where to cache (see above)
#        VIBE_BUILD_JOBS  parallel compile jobs (default: number of CPUs)
#        VIBE_FORCE=1     rebuild even if cached
#        GOPROXY, GOMODCACHE, GOCACHE, GOFLAGS as usual for go
# Needs: go (the version named by the go lines of the wrapper modules, or newer: GOTOOLCHAIN=local, so
#        it never downloads a toolchain); the Go module proxy the first time.
set -Eeuo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN_ROOT="${VIBE_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vibe/bin}"
JOBS="${VIBE_BUILD_JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
export GOTOOLCHAIN=local CGO_ENABLED=0

STEP="setup"
T0=$SECONDS
say() { printf 'build-cluster: %s\n' "$*" >&2; }
on_error() {
  local rc=$?
  [[ $BASH_SUBSHELL == 0 ]] || exit "$rc" # report once, from the top-level shell
  say "FAILED at step: ${STEP} (exit ${rc}). Fix the error above and re-run; finished components are kept."
  exit "$rc"
}
trap on_error ERR

if ! command -v go >/dev/null; then
  STEP="find go"
  say "go is not on PATH; install Go $(awk '/^go /{print $2; exit}' "$HACK/k8s/go.mod") or newer"
  exit 1
fi

# version MODDIR MODULE -> the version the wrapper module requires (one source of truth: its go.mod;
# read with awk, not `go list -m`, so a cached run needs no module download; vibe/cluster/binaries.py
# reads it the same way).
version() {
  local v
  v="$(awk -v m="$2" '$1 == "require" && $2 == m { print $3; exit } $1 == m && $2 ~ /^v/ { print $2; exit }' "$1/go.mod")"
  [[ -n "$v" ]] || { say "$1/go.mod does not require $2"; return 1; }
  printf '%s' "$v"
}

# release_meta MODDIR MODULE VERSION -> sets META_TIME (RFC 3339) and META_COMMIT (git hash, may be
# empty) from the module proxy's metadata, so binaries can report what they were built from.
release_meta() {
  local info
  info="$(cd "$1" && go mod download -json "$2@$3")"
  META_TIME="$(sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' <<<"$info" | head -n1)"
  META_COMMIT="$(sed -n 's/.*"Hash": *"\([0-9a-f]\{40\}\)".*/\1/p' <<<"$info" | head -n1)"
}

# install COMPONENT VERSION MODDIR LDFLAGS_FN PKG... -> $BIN_ROOT/COMPONENT-VERSION/<binaries>
# LDFLAGS_FN is a function printing the -X flags; it runs only when something is built.
install_component() {
  local name="$1" ver="$2" moddir="$3" ldflags_fn="$4"
  shift 4
  local dest="$BIN_ROOT/$name-$ver" bins=() p missing=0
  for p in "$@"; do bins+=("$(basename "$p")"); done
  for p in "${bins[@]}"; do [[ -x "$dest/$p" ]] || missing=1; done
  if [[ $missing == 0 && "${VIBE_FORCE:-0}" != 1 ]]; then
    say "$name $ver: cached in $dest"
    return
  fi
  local t=$SECONDS ldflags
  STEP="download Go modules for $name $ver"
  say "$name $ver: downloading Go modules ..."
  (cd "$moddir" && go mod download)
  say "$name $ver: modules ready after $((SECONDS - t))s"
  ldflags="$("$ldflags_fn" "$moddir" "$ver")"
  STEP="build $name $ver (${bins[*]})"
  say "$name $ver: building ${bins[*]} with $JOBS jobs${BUILD_NOTE:-} ..."
  mkdir -p "$BIN_ROOT"
  local tmp
  tmp="$(mktemp -d "$BIN_ROOT/.build-$name-$ver.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  (cd "$moddir" && go build -mod=readonly -p "$JOBS" -trimpath ${BUILD_TAGS:+-tags "$BUILD_TAGS"} \
    -ldflags "-s -w $ldflags" -o "$tmp/" "$@")
  STEP="install $name $ver into $dest"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  chmod 755 "$dest"
  trap - EXIT
  say "$name $ver: built in $((SECONDS - t))s -> $dest"
}

kubernetes_ldflags() {
  local ver="$2" major minor x="" pkg
  major="${ver#v}" && major="${major%%.*}"
  minor="${ver#v*.}" && minor="${minor%%.*}"
  STEP="read kubernetes $ver release metadata"
  release_meta "$1" k8s.io/kubernetes "$ver"
  # What k8s.io/kubernetes' own hack/lib/version.sh sets, so --version and /version are right.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${META_TIME:-1970-01-01T00:00:00Z}"
    [[ -z "$META_COMMIT" ]] || x+=" -X $pkg.gitCommit=$META_COMMIT"
  done
  printf '%s' "$x"
}

build_kubernetes() {
  local dir="$HACK/k8s" ver
  STEP="read kubernetes version from hack/k8s/go.mod"
  ver="$(version "$dir" k8s.io/kubernetes)"
  BUILD_NOTE=" (the longest step: tens of minutes on 2 cores)" \
    install_component kubernetes "$ver" "$dir" kubernetes_ldflags \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl
  STEP="check kube-apiserver --version"
  local got
  got="$("$BIN_ROOT/kubernetes-$ver/kube-apiserver" --version)"
  [[ "$got" == "Kubernetes $ver" ]] || {
    say "kube-apiserver --version says '$got', expected 'Kubernetes $ver'"
    false
  }
}

kine_ldflags() {
  release_meta "$1" github.com/k3s-io/kine "$2"
  printf '%s' "-X github.com/k3s-io/kine/pkg/version.Version=$2"
  [[ -z "$META_COMMIT" ]] || printf '%s' " -X github.com/k3s-io/kine/pkg/version.GitCommit=${META_COMMIT:0:8}"
}

build_kine() {
  local dir="$HACK/tools/kine" ver
  STEP="read kine version from hack/tools/kine/go.mod"
  ver="$(version "$dir" github.com/k3s-io/kine)"
  install_component kine "$ver" "$dir" kine_ldflags github.com/k3s-io/kine
}

kwok_ldflags() {
  printf '%s' "-X sigs.k8s.io/kwok/pkg/consts.Version=${2#v}"
}

build_kwok() {
  local dir="$HACK/k8s" ver
  STEP="read kwok version from hack/k8s/go.mod"
  ver="$(version "$dir" sigs.k8s.io/kwok)"
  install_component kwok "$ver" "$dir" kwok_ldflags sigs.k8s.io/kwok/cmd/kwok
}

helm_ldflags() {
  local kmin x
  # helm lints and templates against the Kubernetes minor version of the libraries it was built with.
  kmin="$(version "$1" k8s.io/kubernetes)" && kmin="${kmin#v1.}" && kmin="${kmin%%.*}"
  release_meta "$1" helm.sh/helm/v3 "$2"
  x="-X helm.sh/helm/v3/internal/version.version=$2 -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  [[ -z "$META_COMMIT" ]] || x+=" -X helm.sh/helm/v3/internal/version.gitCommit=$META_COMMIT"
  x+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kmin"
  x+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kmin"
  printf '%s' "$x"
}

build_helm() {
  local dir="$HACK/k8s" ver
  STEP="read helm version from hack/k8s/go.mod"
  ver="$(version "$dir" helm.sh/helm/v3)"
  install_component helm "$ver" "$dir" helm_ldflags helm.sh/helm/v3/cmd/helm
}

prometheus_ldflags() {
  # What Prometheus' own .promu.yml sets; the module's v0.3MM.P tag is Prometheus 3.MM.P.
  local pver="${2#v0.}"
  pver="$((10#${pver%%.*} / 100)).$((10#${pver%%.*} % 100)).${pver#*.}"
  release_meta "$1" github.com/prometheus/prometheus "$2"
  printf '%s' "-X github.com/prometheus/common/version.Version=$pver -X github.com/prometheus/common/version.Branch=HEAD"
  [[ -z "$META_COMMIT" ]] || printf '%s' " -X github.com/prometheus/common/version.Revision=$META_COMMIT"
  printf '%s' " -X github.com/prometheus/common/version.BuildDate=${META_TIME:-unknown}"
}

build_prometheus() {
  local dir="$HACK/tools/prometheus" ver
  STEP="read prometheus version from hack/tools/prometheus/go.mod"
  ver="$(version "$dir" github.com/prometheus/prometheus)"
  BUILD_TAGS="remove_all_sd" install_component prometheus "$ver" "$dir" prometheus_ldflags \
    github.com/prometheus/prometheus/cmd/prometheus \
    github.com/prometheus/prometheus/cmd/promtool
}

components=("$@")
# Kubernetes first: kwok and helm then reuse most of its compiled packages.
[[ ${#components[@]} -gt 0 ]] || components=(kubernetes kwok kine helm prometheus)
say "$(go version | cut -d' ' -f3-) -> $BIN_ROOT (components: ${components[*]})"
for c in "${components[@]}"; do
  case "$c" in
    kubernetes | kine | kwok | helm | prometheus) "build_$c" ;;
    *)
      STEP="parse arguments"
      say "unknown component '$c' (want kubernetes, kine, kwok, helm or prometheus)"
      exit 2
      ;;
  esac
done
STEP="done"
say "all done in $((SECONDS - T0))s"
