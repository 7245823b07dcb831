#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy (no binary download), once per machine:
# a throw-away Go module that requires k8s.io/kubernetes and points each k8s.io/* staging
# module (which the kubernetes module replaces with ./staging/...) at its published v0.x
# release. The binary lands in $FOGVERSE_CACHE/kube-apiserver-$VERSION/kube-apiserver and is
# reused from then on; concurrent runs (the Makefile's background build and a test fixture)
# wait for each other on a lock. Needs Go >= 1.24 (k8s 1.34's go.mod); ~3.5 min on 2 idle cores.
#
#   deploy/kubernetes/apiserver/build.sh          # prints the binary's path
set -euo pipefail

VERSION="${KUBE_VERSION:-v1.34.4}"
CACHE="${FOGVERSE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fogverse}"
DIR="$CACHE/kube-apiserver-$VERSION"
BIN="$DIR/kube-apiserver"
STAGING="v0.${VERSION#v1.}"

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

GO="$(command -v go || true)"
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -z "$GO" ]]; then
    echo "build.sh: no Go toolchain (need >= 1.24; Debian 12's golang-go is 1.19)" >&2
    exit 1
fi
minor="$("$GO" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if (( minor < 24 )); then
    echo "build.sh: $("$GO" env GOVERSION) is too old for kubernetes $VERSION (need >= 1.24)" >&2
    exit 1
fi

SRC="$DIR/src"
rm -rf "$SRC"
mkdir -p "$SRC"
cd "$SRC"
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local
"$GO" mod init fogverse.local/kube-apiserver >/dev/null 2>&1
# The kubernetes module's own go.mod names its staging modules (=> ./staging/src/k8s.io/x).
mod="$("$GO" mod download -json "k8s.io/kubernetes@$VERSION" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')"
mapfile -t staged < <(sed -nE 's#^\s*(k8s\.io/[^ ]+) => \./staging/.*#\1#p' "$mod")
if (( ${#staged[@]} == 0 )); then
    echo "build.sh: found no staging modules in $mod" >&2
    exit 1
fi
"$GO" mod edit -require="k8s.io/kubernetes@$VERSION"
for m in "${staged[@]}"; do
    "$GO" mod edit -replace="$m=$m@$STAGING"
done
cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
"$GO" mod tidy >&2
# Built without optimisation or inlining: the binary only serves the tests (a few requests),
# and on 2 idle cores the build takes 196 s and 375 CPU-s instead of 264 s and 505 CPU-s,
# CPU that `make test` otherwise takes from the suite; the tests run 16 s instead of 10 s.
"$GO" build -trimpath -ldflags=-s -gcflags=all='-N -l' -o "$BIN.tmp" \
    k8s.io/kubernetes/cmd/kube-apiserver >&2
mv "$BIN.tmp" "$BIN"
rm -rf "$SRC"
echo "$BIN"
