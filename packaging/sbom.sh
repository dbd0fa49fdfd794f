#!/usr/bin/env bash
# packaging/sbom.sh OUT_DIR: a CycloneDX 1.5 SBOM (JSON) for each shipped
# binary, OUT_DIR/BINARY.cdx.json (steward-agent, steward-controlplane,
# stewardctl), made by cargo-cyclonedx from Cargo.lock for the host target,
# without build-time dependencies. Each is checked to be CycloneDX JSON that
# names the binary and every crate `cargo tree` links into it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: packaging/sbom.sh OUT_DIR}
mkdir -p "$out"
target=$(rustc -vV | sed -n 's/^host: //p')
# cargo-cyclonedx writes CRATE_DIR/BINARY_bin.cdx.json for every binary of the
# workspace; keep the shipped ones, drop the rest (benchmarks).
cargo cyclonedx -q --format json --describe binaries --spec-version 1.5 --no-build-deps --target "$target"
for spec in agent:steward-agent:steward-agent controlplane:steward-controlplane:steward-controlplane \
  controlplane:steward-controlplane:stewardctl; do
  IFS=: read -r dir crate bin <<<"$spec"
  mv "$dir/${bin}_bin.cdx.json" "$out/$bin.cdx.json"
  cargo tree --locked -q -p "$crate" -e normal --target "$target" --prefix none -f '{p}' \
    | awk '{print $1}' | sort -u >"$out/$bin.crates"
  python3 - "$out/$bin.cdx.json" "$out/$bin.crates" "$bin" "$crate" <<'PY'
import json, sys
bom_path, crates_path, binary, crate = sys.argv[1:]
bom = json.load(open(bom_path))
assert bom.get("bomFormat") == "CycloneDX", f"{bom_path}: not a CycloneDX document"
assert bom["metadata"]["component"]["name"] == binary, f"{bom_path}: describes {bom['metadata']['component']['name']}"
named = {c["name"] for c in bom.get("components", [])} | {crate}
linked = {line.strip() for line in open(crates_path) if line.strip()}
missing = sorted(linked - named)
assert not missing, f"{bom_path}: crates linked into {binary} but not in the SBOM: {missing}"
unversioned = [c["name"] for c in bom["components"] if not c.get("version") or not c.get("purl")]
assert not unversioned, f"{bom_path}: components without version or purl: {unversioned}"
print(f"{bom_path}: {len(bom['components'])} components, all {len(linked)} crates of {binary} named")
PY
  rm "$out/$bin.crates"
done
find . -name '*_bin.cdx.json' -not -path './target/*' -delete
