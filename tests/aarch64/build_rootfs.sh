#!/usr/bin/env bash
# An arm64 Debian Python 3.11 with the device extra, for running the agent under
# qemu-aarch64-static: packages fetched with a private apt state (no root, the host's apt
# configuration untouched) and unpacked with dpkg -x; wheels for aarch64 from PyPI.
# Usage: build_rootfs.sh DEST   (DEST/rootfs, DEST/site; DEST/.complete when the rootfs is
# done, DEST/.site listing the wheels in DEST/site: a changed list rebuilds the site only)
set -euo pipefail
dest=$(realpath -m "$1")
# ai-edge-litert 2.1.x: 2.2 and 2.3 crash under emulation (seen here); numpy<2 fits both it
# and tflite-runtime; cheroot and jsonschema: the agent's HTTP server and validation
wheels=("ai-edge-litert==2.1.6" "numpy<2" pillow rich "cheroot>=10" "jsonschema>=4.18")
if [ -f "$dest/.complete" ]; then
    [ "$(cat "$dest/.site" 2>/dev/null)" = "${wheels[*]}" ] && {
        echo "aarch64 rootfs: cached in $dest"; exit 0; }
else
rm -rf "$dest"; mkdir -p "$dest"/{rootfs,site,debs,apt/lists/partial,apt/cache/archives/partial}
touch "$dest/apt/status"
apt_opts=(-o "Dir::State::Lists=$dest/apt/lists" -o "Dir::State::status=$dest/apt/status"
          -o "Dir::Cache=$dest/apt/cache" -o "APT::Architecture=arm64"
          -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1")
apt-get "${apt_opts[@]}" update -qq
packages=(libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5
          libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libcrypt1
          libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
          libkrb5support0 libcom-err2 libkeyutils1 media-types
          python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11)
(cd "$dest/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%/:arm64}" \
    >/dev/null 2>&1)
for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest/rootfs"; done
rm -rf "$dest/debs" "$dest/apt"
touch "$dest/.complete"
fi
rm -rf "$dest/site"; mkdir -p "$dest/site"
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_27 manylinux_2_28 manylinux_2_34 \
           manylinux_2_35 manylinux_2_36; do platforms+=(--platform "${tag}_aarch64"); done
"${PYTHON:-python3}" -m pip install -q --target "$dest/site" "${platforms[@]}" \
    --implementation cp --python-version 3.11 \
    --only-binary=:all: "${wheels[@]}"
echo "${wheels[*]}" > "$dest/.site"
echo "aarch64 rootfs: built in $dest"
