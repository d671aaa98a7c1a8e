#!/usr/bin/env bash
# Installs the tools that check quotaflow's deployment artifacts, once:
#   helm      from the Go module proxy (go install, pinned)         -> charts/ lint + template
#   vegeta    from the Go module proxy (go install, pinned)         -> the HTTP load of
#             bench/edge_bench.py and bench/gateway_bench.py (bench/loadgen.py)
#   promtool  from Debian's `prometheus` package (.deb, extracted)  -> alert rule unit tests
#   amtool    from Debian's `prometheus-alertmanager` package       -> Alertmanager routing tests
#   nginx     from Debian's `nginx` package (.deb, extracted)       -> forward-auth end to end
#   caddy     from Debian's `caddy` package (.deb, extracted)       -> forward-auth end to end
#   compose-spec.json, the Compose file JSON Schema, from the compose-go Go module (the
#             library Docker Compose validates with)                 -> docker-compose.yml check
#   chromium + chromedriver, Debian's `chromium` and `chromium-driver`, installed with
#             apt-get (root; a browser needs its whole dependency tree) -> the console's
#             browser test (tests/console/test_browser.py)
# into $QUOTAFLOW_TOOLS_BIN (default ~/.cache/quotaflow/bin). A tool already there at the
# right version is left alone, so a second run does nothing and needs no network.
#
# The Debian packages are downloaded and unpacked, not installed: no daemon, no systemd
# unit, no dependencies; only the binaries are kept (the Go ones are static; nginx links
# only libraries of Debian's base system, checked with ldd after extraction). `apt-get update` runs
# only when apt does not know the package yet (it needs root).
set -euo pipefail

HELM_VERSION="v3.19.0"
VEGETA_VERSION="v12.13.0"  # bench/loadgen.py names the same version
COMPOSE_GO_VERSION="v2.16.2"
BIN="${QUOTAFLOW_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/quotaflow/bin}"
mkdir -p "$BIN"

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

install_helm() {
  command -v go >/dev/null || { log "go is needed to build helm"; exit 1; }
  # The module version recorded in the binary, not `helm version` (go install leaves that
  # at the minor version unless told otherwise).
  if [[ -x "$BIN/helm" ]] && [[ "$(go version -m "$BIN/helm" 2>/dev/null | awk '$1 == "mod" {print $3}')" == "$HELM_VERSION" ]]; then
    return
  fi
  log "building helm $HELM_VERSION with go install (about 2-5 minutes on 2 cores)"
  # The -X flags are the ones helm's own Makefile sets: without them `helm version` says
  # v3.19 and `helm template`/`lint` assume Kubernetes 1.20 (client-go of v3.19.0 is 1.34).
  local v="helm.sh/helm/v3"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w \
    -X $v/internal/version.version=$HELM_VERSION \
    -X $v/pkg/chartutil.k8sVersionMajor=1 -X $v/pkg/chartutil.k8sVersionMinor=34 \
    -X $v/pkg/lint/rules.k8sVersionMajor=1 -X $v/pkg/lint/rules.k8sVersionMinor=34" \
    "$v/cmd/helm@$HELM_VERSION"
}

install_vegeta() {
  command -v go >/dev/null || { log "go is needed to build vegeta"; exit 1; }
  if [[ -x "$BIN/vegeta" ]] && [[ "$(go version -m "$BIN/vegeta" 2>/dev/null | awk '$1 == "mod" {print $3}')" == "$VEGETA_VERSION" ]]; then
    return
  fi
  log "building vegeta $VEGETA_VERSION with go install (about a minute)"
  # -X sets vegeta's main.Version, so `vegeta -version` names the version.
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X main.Version=$VEGETA_VERSION" \
    "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
  [[ -x "$BIN/vegeta" ]] || { log "vegeta build failed"; exit 1; }
}

# debian_binary PACKAGE BINARY [DIR]: extracts /DIR/BINARY (default usr/bin) from the
# candidate .deb of PACKAGE.
debian_binary() {
  local package="$1" binary="$2" dir="${3:-usr/bin}" tmp
  command -v apt-get >/dev/null || { log "apt-get is needed for $binary (Debian's $package)"; exit 1; }
  if [[ -z "$(apt-cache policy "$package" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]]; then
    log "apt does not know $package yet: apt-get update"
    apt-get update -qq
  fi
  tmp="$(mktemp -d)"
  chmod 0755 "$tmp"  # apt's sandbox user may write the download here
  log "downloading Debian's $package for $binary"
  (cd "$tmp" && apt-get download -qq "$package" 2>&1 | grep -v 'unsandboxed' >&2 || true)
  local deb
  deb="$(ls "$tmp"/"$package"_*.deb 2>/dev/null | head -n1)"
  [[ -n "$deb" ]] || { log "apt-get download $package failed"; exit 1; }
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" "./$dir/$binary"
  install -m 0755 "$tmp/$dir/$binary" "$BIN/$binary"
  rm -rf "$tmp"
}

install_promtool() {
  "$BIN/promtool" --version >/dev/null 2>&1 && return
  debian_binary prometheus promtool
}

install_amtool() {
  "$BIN/amtool" --version >/dev/null 2>&1 && return
  debian_binary prometheus-alertmanager amtool
}

install_nginx() {
  "$BIN/nginx" -v >/dev/null 2>&1 && return
  debian_binary nginx nginx usr/sbin
  # Its shared libraries (libssl3, libpcre2-8-0, libcrypt1, zlib1g) come with Debian's base
  # system; if one is missing, say which rather than leave a binary that cannot start.
  local missing
  missing="$(ldd "$BIN/nginx" | awk '/not found/ {print $1}')"
  if [[ -n "$missing" ]]; then
    if [[ "$(id -u)" == 0 ]]; then
      log "nginx needs $missing: installing Debian's nginx dependencies"
      apt-get install -y -qq libssl3 libpcre2-8-0 libcrypt1 zlib1g >/dev/null
    else
      log "nginx needs $missing: apt-get install libssl3 libpcre2-8-0 libcrypt1 zlib1g"
      rm -f "$BIN/nginx"
      exit 1
    fi
  fi
  "$BIN/nginx" -V 2>&1 | grep -q -- --with-http_auth_request_module \
    || { log "this nginx lacks auth_request"; rm -f "$BIN/nginx"; exit 1; }
}

install_caddy() {
  "$BIN/caddy" version >/dev/null 2>&1 && return
  debian_binary caddy caddy
}

install_compose_schema() {
  local target="$BIN/compose-spec-$COMPOSE_GO_VERSION.json" dir
  [[ -s "$target" ]] && return
  command -v go >/dev/null || { log "go is needed to fetch the compose schema"; exit 1; }
  log "fetching the Compose JSON Schema (compose-go $COMPOSE_GO_VERSION) from the Go module proxy"
  dir="$(go mod download -json "github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION" \
    | awk -F'"' '$2 == "Dir" {print $4}')"
  [[ -n "$dir" && -s "$dir/schema/compose-spec.json" ]] || { log "compose-go download failed"; exit 1; }
  install -m 0644 "$dir/schema/compose-spec.json" "$target"
}

install_chromium() {
  # A browser is not one binary: it is installed, not extracted. The test finds it at
  # /usr/bin/chromium and /usr/bin/chromedriver; a missing one fails here, never skips.
  if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    return
  fi
  command -v apt-get >/dev/null || { log "apt-get is needed for Debian's chromium"; exit 1; }
  [[ "$(id -u)" == 0 ]] || { log "chromium: run as root, or apt-get install chromium chromium-driver"; exit 1; }
  if [[ -z "$(apt-cache policy chromium-driver 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]]; then
    log "apt does not know chromium-driver yet: apt-get update"
    apt-get update -qq
  fi
  log "installing Debian's chromium and chromium-driver"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || { log "chromium install failed"; exit 1; }
}

install_chromium
install_promtool
install_amtool
install_nginx
install_caddy
install_compose_schema
install_helm
install_vegeta
"$BIN/helm" version --template 'helm {{.Version}}{{"\n"}}'
"$BIN/promtool" --version 2>&1 | head -n1
"$BIN/amtool" --version 2>&1 | head -n1
"$BIN/nginx" -v 2>&1
"$BIN/caddy" version | head -n1
/usr/bin/chromium --version
/usr/bin/chromedriver --version | head -n1
"$BIN/vegeta" -version | head -n1
echo "compose schema $BIN/compose-spec-$COMPOSE_GO_VERSION.json"
