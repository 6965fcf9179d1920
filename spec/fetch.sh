#!/usr/bin/env bash
# Re-fetch the AMQP 0-9-1 spec XML and its copyright file from Debian's
# amqp-specs package into this folder, checking the XML against the sums
# recorded in README.md. Works from any directory; needs apt-get and dpkg-deb.
set -euo pipefail

spec_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

deb_sha256=c4a3fe9c98a8634ba7cc97805aba1e6843b0b245cd72f11ee90021829749059e
extended=usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml
extended_sha256=1eeea0eb7e4eacb9716b160fc1d09aff2a33021f6f64541cc9215b8fef0b32fa
plain=usr/share/amqp/specs/0-9-1/amqp0-9-1.stripped.xml
plain_sha256=14ea60f5be24e73850b968f8f329783a6161db18c4380ad626bb2753c20fb1d9
copyright=usr/share/doc/amqp-specs/copyright

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

if ! apt-get download amqp-specs; then
    echo "fetch.sh: 'apt-get download amqp-specs' failed; run 'apt-get update' and try again" >&2
    exit 1
fi
debs=(amqp-specs_*.deb)
echo "downloaded ${debs[0]}"
if [[ "$(sha256sum "${debs[0]}" | cut -d' ' -f1)" != "$deb_sha256" ]]; then
    echo "fetch.sh: warning: this .deb is not the one recorded in spec/README.md (version 1-0r0-3.1);" \
        "carrying on, the XML sums below decide" >&2
fi
dpkg-deb -x "${debs[0]}" root

# Verify before copying, so a mismatch leaves spec/ as it was.
check() { # FILE EXPECTED_SHA256
    local actual
    actual="$(sha256sum "root/$1" | cut -d' ' -f1)"
    if [[ "$actual" != "$2" ]]; then
        echo "fetch.sh: sha256 mismatch for $1" >&2
        echo "  expected $2" >&2
        echo "  got      $actual" >&2
        echo "spec/ was not changed. If the new file is wanted, review it and update the sums in spec/fetch.sh and spec/README.md." >&2
        exit 1
    fi
}
check "$extended" "$extended_sha256"
check "$plain" "$plain_sha256"

cp "root/$extended" "$spec_dir/amqp0-9-1.stripped.extended.xml"
cp "root/$plain" "$spec_dir/amqp0-9-1.stripped.xml"
cp "root/$copyright" "$spec_dir/LICENSE.amqp-specs"
echo "spec XML verified and copied into $spec_dir; copyright file copied to LICENSE.amqp-specs"
