# Guest kernels for Skiff's VMs (sourced, not run): Debian's cloud kernel, fetched with apt and
# extracted (never installed) into a cache, and its modules copied into an initramfs in load
# order. Used by packaging/vm-assets.sh (the task microVMs' kernel and initramfs) and by
# tests/vm/run-cgroup2.sh (a cgroup v2 kernel for the tests). Needs apt-get, dpkg, depmod.
#
#   guest_kernel CACHE       sets gk_dir, gk_ver and gk_vmlinuz (returns 1, saying why, when no
#                            kernel can be had: not known to apt and nothing cached)
#   guest_modules DIR M...   copies modules M (names, with their dependencies, deepest first)
#                            into DIR and lists them in DIR/load-order, which the guest loads
#   guest_binary BIN ROOT P  copies BIN to ROOT/P without its DWARF (the same code, a tenth of
#                            the size to boot) and its shared libraries, at the paths ldd
#                            resolves (the loader included), under ROOT

guest_kernel() {
  local cache=$1 pkg tmp
  local arch; arch=$(dpkg --print-architecture)
  kpkg() {
    apt-cache depends "linux-image-cloud-$arch" 2>/dev/null |
      awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
  }
  pkg=$(kpkg || true)
  if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(kpkg || true)
  fi
  if [ -z "$pkg" ]; then
    # Offline: any kernel cached before will do.
    pkg=$(find "$cache" -maxdepth 2 -name done -printf '%h\n' 2>/dev/null | sort | tail -1 | xargs -r basename)
  fi
  [ -n "$pkg" ] || { echo "linux-image-cloud-$arch is not known to apt and nothing is cached in $cache" >&2; return 1; }
  gk_dir=$cache/$pkg
  if [ ! -f "$gk_dir/done" ]; then
    echo "fetching $pkg into $gk_dir" >&2
    mkdir -p "$cache"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || { rm -rf "$tmp"; echo "apt-get download $pkg failed" >&2; return 1; }
    rm -rf "$gk_dir.part"
    dpkg -x "$tmp"/"$pkg"_*.deb "$gk_dir.part"
    rm -rf "$tmp"
    depmod -b "$gk_dir.part" "$(ls "$gk_dir.part/lib/modules")"
    rm -rf "$gk_dir"
    mv "$gk_dir.part" "$gk_dir"
    touch "$gk_dir/done"
  fi
  gk_ver=$(ls "$gk_dir/lib/modules")
  gk_vmlinuz=$gk_dir/boot/vmlinuz-$gk_ver
}

guest_modules() {
  local out=$1 m path name
  shift
  local mdir=$gk_dir/lib/modules/$gk_ver
  local -A seen=()
  local order=()
  add_module() {
    local path=$1 dep
    [ -n "${seen[$path]:-}" ] && return
    seen[$path]=1
    for dep in $(awk -v m="$path:" '$1 == m { $1 = ""; print }' "$mdir/modules.dep"); do
      add_module "$dep"
    done
    order+=("$path")
  }
  for m in "$@"; do
    path=$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n);
                               gsub(/-/, "_", n) } n == m { print $1; exit }' "$mdir/modules.dep")
    [ -n "$path" ] || { echo "module $m not in $mdir/modules.dep (built in?)" >&2; continue; }
    add_module "$path"
  done
  mkdir -p "$out"
  : > "$out/load-order"
  for path in "${order[@]}"; do
    name=$(basename "$path")
    case $name in
      *.ko.xz) xz -dc "$mdir/$path" > "$out/${name%.xz}"; name=${name%.xz} ;;
      *.ko.zst) zstd -qdc "$mdir/$path" > "$out/${name%.zst}"; name=${name%.zst} ;;
      *) cp "$mdir/$path" "$out/$name" ;;
    esac
    echo "$name" >> "$out/load-order"
  done
}

guest_binary() {
  local bin=$1 root=$2 dest=$3 lib
  mkdir -p "$root$(dirname "$dest")"
  objcopy --strip-debug "$bin" "$root$dest"
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
