#!/bin/sh
# go_build.sh APP MINOR full|stripped OUT
# Builds tests/apps/APP/main.go with Go 1.MINOR (Debian's /usr/lib/go-1.MINOR,
# which `cargo xtask setup` installs) into OUT, stripped (-ldflags=-s -w: no
# symbol table, no DWARF) if asked. GOPATH mode over Debian's Go library
# packages (/usr/share/gocode: golang-google-grpc-dev...): no network, no
# module download. The build cache sits next to OUT, so rebuilds are quick.
set -eu
app=$1 minor=$2 strip=$3 out=$4
mkdir -p "$(dirname "$out")"
export GOCACHE="$(dirname "$out")/go-cache" GOPATH=/usr/share/gocode \
    GO111MODULE=off GOFLAGS= GOTOOLCHAIN=local
flags=
[ "$strip" = stripped ] && flags="-s -w"
exec "/usr/lib/go-1.$minor/bin/go" build -ldflags="$flags" -o "$out" \
    "$(dirname "$0")/$app/main.go"
