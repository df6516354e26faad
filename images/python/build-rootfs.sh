#!/usr/bin/env bash
# Builds the root filesystem of the codebox Python sandbox image with
# debootstrap, for hosts that cannot pull a base image from a registry.
#
# Usage: build-rootfs.sh <packages-file> <output.tar>
#
# The result is a plain tar with numeric owners, meant for `docker import`.
# `codebox image build` runs this script and then imports the tar, adding the
# image settings (user, working directory, environment, command).
#
# Environment:
#   CODEBOX_DEBIAN_MIRROR  Debian mirror to bootstrap from. Default: the first
#                          APT source on this host that serves bookworm, else
#                          http://deb.debian.org/debian.
#   XDG_CACHE_HOME         Downloaded .debs are kept in
#                          ${XDG_CACHE_HOME:-/var/cache}/codebox/debootstrap
#                          so that a rebuild downloads almost nothing.
#   CODEBOX_DEBIAN_KEYRING The keyring the mirror's Release signature is checked
#                          against. Default:
#                          /usr/share/keyrings/debian-archive-keyring.gpg
#   TMPDIR                 Where the root filesystem is assembled
#                          (default /var/tmp; needs ~2 GB for the full image).
#
# Interrupted (SIGINT, SIGTERM, SIGHUP) or cut off from its reader (SIGPIPE), it
# removes its temporary root before exiting, even when its output goes nowhere.
#
# Progress lines start with "==> "; debootstrap's own output is passed through.
set -euo pipefail

readonly SUITE=bookworm
readonly DEFAULT_MIRROR=http://deb.debian.org/debian
readonly SANDBOX_USER=sandbox
readonly SANDBOX_ID=1000

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

step() {
    printf '==> %s\n' "$*"
}

if [[ $# -ne 2 ]]; then
    printf 'usage: %s <packages-file> <output.tar>\n' "$prog" >&2
    exit 2
fi
packages_file=$1
output=$2

# debootstrap, chroot and useradd live in sbin directories, which are not on
# every caller's PATH (for example when run through sudo or from a service).
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

[[ $(id -u) -eq 0 ]] ||
    die "must be run as root: debootstrap needs root to set file owners, create device nodes and chroot"
# `command -v` alone also reports a matching file that is not executable.
debootstrap_bin=$(command -v debootstrap 2>/dev/null || true)
[[ -n $debootstrap_bin && -x $debootstrap_bin ]] ||
    die "debootstrap is not installed; install it with: apt-get install -y debootstrap debian-archive-keyring gpgv"
# debootstrap checks the Release file's signature with gpgv only when it has a
# keyring; without one it would install whatever the mirror (or anything in
# between) serves. So the keyring is always given, and must exist.
keyring=${CODEBOX_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
[[ -f $keyring ]] ||
    die "the Debian archive keyring $keyring is missing; install it with: apt-get install -y debian-archive-keyring"
command -v gpgv >/dev/null 2>&1 ||
    die "gpgv is not installed (debootstrap checks the mirror's signatures with it); install it with: apt-get install -y gpgv"
[[ -f $packages_file && -r $packages_file ]] ||
    die "cannot read packages file $packages_file"
output_dir=$(dirname -- "$output")
[[ -d $output_dir && -w $output_dir ]] ||
    die "output directory $output_dir does not exist or is not writable"

# Package files hold one package per line; '#' starts a comment. The same rule
# is used by the Dockerfile and by codebox itself.
mapfile -t packages < <(sed -e 's/#.*//' -- "$packages_file" | tr -s ' \t\r' '\n' | sed -e '/^$/d')
((${#packages[@]} > 0)) || die "no packages listed in $packages_file"
for pkg in "${packages[@]}"; do
    [[ $pkg =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "invalid package name '$pkg' in $packages_file"
done
include=$(
    IFS=,
    printf '%s' "${packages[*]}"
)

# Prints the first binary ("deb") APT source of this host that serves the
# bookworm suite itself. Sources for other suites (bookworm-security, other
# distributions, third-party repositories) cannot bootstrap bookworm, so they
# are skipped even when they come first.
detect_mirror() {
    local file
    local -a files=()
    [[ -f /etc/apt/sources.list ]] && files+=(/etc/apt/sources.list)
    for file in /etc/apt/sources.list.d/*; do
        # APT itself only reads *.list and *.sources; anything else (for
        # example *.disabled or *.save) is not an active source.
        case $file in
        *.list | *.sources) [[ -f $file ]] && files+=("$file") ;;
        esac
    done
    for file in "${files[@]}"; do
        case $file in
        *.sources)
            awk -v suite="$SUITE" '
                function flush() {
                    if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ") &&
                        tolower(enabled) != "no" && uris != "") {
                        split(uris, u, /[ \t]+/)
                        print u[1]
                        found = 1
                        exit
                    }
                    types = uris = suites = enabled = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[^ \t]/ {
                    key = tolower($0); sub(/[ \t]*:.*/, "", key)
                    value = $0; sub(/^[^:]*:[ \t]*/, "", value); sub(/[ \t]+$/, "", value)
                    if (key == "types") types = value
                    else if (key == "uris") uris = value
                    else if (key == "suites") suites = value
                    else if (key == "enabled") enabled = value
                }
                END { if (!found) flush() }
            ' "$file"
            ;;
        *)
            awk -v suite="$SUITE" '
                /^[ \t]*deb[ \t]/ {
                    line = $0
                    gsub(/\[[^]]*\]/, "", line)
                    n = split(line, f, /[ \t]+/)
                    if (f[1] == "") { for (i = 1; i < n; i++) f[i] = f[i + 1] }
                    if (f[3] == suite) { print f[2]; exit }
                }
            ' "$file"
            ;;
        esac
    done | sed -n -e 's:/*$::' -e '/^\(https\?\|file\):\/\//{p;q}'
}

mirror=${CODEBOX_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    mirror=$(detect_mirror || true)
    mirror=${mirror:-$DEFAULT_MIRROR}
fi

# The XDG base directory spec says relative values must be ignored.
cache_base=${XDG_CACHE_HOME:-/var/cache}
[[ $cache_base == /* ]] || cache_base=/var/cache
cache_dir=$cache_base/codebox/debootstrap
mkdir -p -- "$cache_dir" || die "cannot create cache directory $cache_dir"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/codebox-rootfs.XXXXXX") ||
    die "cannot create a temporary directory in ${TMPDIR:-/var/tmp}"
root=$work/rootfs
partial_output=$output.partial.$$

# Unmounts everything below the work directory, deepest first. debootstrap
# mounts /proc and /sys (and sometimes binds /dev) inside the target and may
# leave them mounted when it fails; deleting through such a mount would reach
# the host's files.
unmount_below_work() {
    awk -v prefix="$work/" 'index($2, prefix) == 1 { print $2 }' /proc/mounts |
        sort -r |
        while read -r mountpoint; do
            umount -l -- "$mountpoint" || true
        done
}

cleanup() {
    local status=$?
    # The cleanup must run to its end: further signals are ignored (the
    # children it starts inherit that), a reader that went away must not kill
    # it on the next progress line, and a failing step must not stop it.
    trap '' INT TERM HUP PIPE
    trap - EXIT
    set +e
    rm -f -- "$partial_output"
    if [[ -d $work ]]; then
        step "removing temporary root $work" 2>/dev/null
        unmount_below_work 2>/dev/null
        # --one-file-system is a second guard against a mount left behind.
        rm -rf --one-file-system -- "$work" 2>/dev/null
    fi
    exit "$status"
}
trap cleanup EXIT
# Without these, bash would not run the EXIT trap when interrupted or killed.
# SIGPIPE comes when whoever reads the output (codebox) is gone: the build is
# pointless then, and dying of it would leave the temporary root behind.
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

started=$SECONDS

step "packages (${#packages[@]}): ${packages[*]}"
step "mirror: $mirror (signatures checked against $keyring)"
step "package cache: $cache_dir"
# Tails debootstrap's log, which holds the real cause of a failure (typically
# a dpkg or download error) and is deleted together with the work directory.
debootstrap_failed() {
    if [[ -f $root/debootstrap/debootstrap.log ]]; then
        printf '%s\n' "--- last lines of debootstrap.log ---"
        tail -n 20 -- "$root/debootstrap/debootstrap.log"
    fi
    die "debootstrap $1 failed for suite $SUITE from $mirror"
}

# debootstrap runs in its two stages so that dpkg can be told not to fsync
# every file it unpacks between them: on most disks that fsync dominates the
# second stage. Durability is not needed because the tree is thrown away
# whenever anything fails, and the setting is removed again afterwards.
# Builds running at once (two servers that found the image missing together) share the
# package cache: one at a time downloads into it and prunes it, or one would read a .deb the
# other is still writing or has just pruned.
exec {cache_lock}>"$cache_dir/.lock" || die "cannot open $cache_dir/.lock"
flock "$cache_lock" || die "cannot lock the package cache $cache_dir"
step "debootstrap --variant=minbase $SUITE into $root (first stage: download and unpack)"
"$debootstrap_bin" --foreign --variant=minbase --include="$include" --cache-dir="$cache_dir" \
    --keyring="$keyring" "$SUITE" "$root" "$mirror" 2>&1 || debootstrap_failed "first stage"
flock --unlock "$cache_lock"
unsafe_io_cfg=$root/etc/dpkg/dpkg.cfg.d/codebox-unsafe-io
printf 'force-unsafe-io\n' >"$unsafe_io_cfg"
step "debootstrap second stage: installing packages"
chroot "$root" /debootstrap/debootstrap --second-stage 2>&1 || debootstrap_failed "second stage"
rm -f -- "$unsafe_io_cfg"
unmount_below_work
step "debootstrap finished after $((SECONDS - started))s"

# Older versions of the same packages are never used again; dropping them
# keeps the cache from growing with every Debian point release. Packages that
# this build did not install are left alone because other package lists
# (full and test image) share the cache.
step "pruning superseded .debs from the package cache"
flock "$cache_lock" || die "cannot lock the package cache $cache_dir"
# The ${...} below are dpkg-query fields, not shell variables.
# shellcheck disable=SC2016
deb_name_format='${Package} ${Package}_${Version}_${Architecture}.deb\n'
declare -A installed_name=() wanted_deb=()
while IFS=' ' read -r name deb; do
    installed_name[$name]=1
    wanted_deb[$deb]=1
done < <(chroot "$root" dpkg-query -W -f "$deb_name_format" | sed -e 's/:/%3a/')
for cached in "$cache_dir"/*.deb; do
    [[ -f $cached ]] || continue
    deb=${cached##*/}
    if [[ -n ${installed_name[${deb%%_*}]:-} && -z ${wanted_deb[$deb]:-} ]]; then
        rm -f -- "$cached"
    fi
done
exec {cache_lock}>&-

step "adding user $SANDBOX_USER ($SANDBOX_ID:$SANDBOX_ID) with home /home/$SANDBOX_USER"
chroot "$root" groupadd --gid "$SANDBOX_ID" "$SANDBOX_USER"
chroot "$root" useradd --no-log-init --uid "$SANDBOX_ID" --gid "$SANDBOX_ID" \
    --create-home --home-dir "/home/$SANDBOX_USER" --shell /bin/bash "$SANDBOX_USER"

# /mnt/data belongs to the sandbox user so that a fresh named volume mounted
# there inherits that owner; /mnt/inputs is only ever read by the sandbox.
step "creating /mnt/data and /mnt/inputs"
install -d -m 0755 -o "$SANDBOX_ID" -g "$SANDBOX_ID" "$root/mnt/data"
install -d -m 0755 -o 0 -g 0 "$root/mnt/inputs"

# The image runs with a read-only root and PYTHONDONTWRITEBYTECODE, so Python
# can never cache bytecode at run time: without the __pycache__ directories
# that Debian's postinst scripts create, every `import pandas` would compile
# hundreds of modules again. Check that they exist, and create missing ones.
if [[ -x $root/usr/bin/python3 ]]; then
    step "checking precompiled Python bytecode"
    count_missing_pyc='
import importlib.util, os, sys
missing = total = 0
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames:
            if name.endswith(".py"):
                total += 1
                source = os.path.join(dirpath, name)
                if not os.path.exists(importlib.util.cache_from_source(source)):
                    missing += 1
print(missing, total)
'
    stdlib=$(chroot "$root" python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    pydirs=("$stdlib" /usr/lib/python3/dist-packages)
    read -r missing total < <(chroot "$root" python3 -c "$count_missing_pyc" "${pydirs[@]}")
    if ((missing == 0)); then
        step "all $total Python source files have bytecode"
    else
        step "$missing of $total Python source files have no bytecode; running compileall"
        # A few files never compile (test fixtures with deliberate syntax
        # errors, Python 2 examples); that must not fail the build.
        chroot "$root" python3 -m compileall -qq "${pydirs[@]}" || true
        read -r missing total < <(chroot "$root" python3 -c "$count_missing_pyc" "${pydirs[@]}")
        step "$missing of $total Python source files still have no bytecode (they do not compile)"
    fi
fi

step "removing APT caches, documentation, man pages, locales and logs"
rm -rf "${root:?}"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
    "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
    "$root"/usr/share/man "$root"/usr/share/info
# Copyright files are tiny and the licenses of several packages require them
# to accompany the binaries, so only they survive in /usr/share/doc.
if [[ -d $root/usr/share/doc ]]; then
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -depth -type d -empty -delete
fi
# Only the C locale is used: message catalogues and compiled locales go.
if [[ -d $root/usr/share/locale ]]; then
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 \
        ! -name locale.alias ! -name C ! -name 'C.*' -exec rm -rf {} +
fi
if [[ -d $root/usr/lib/locale ]]; then
    find "$root/usr/lib/locale" -mindepth 1 -maxdepth 1 ! -name C ! -name 'C.*' -exec rm -rf {} +
fi
find "$root/var/log" -type f -delete
# Docker provides /dev, resolv.conf and the hostname at run time; what
# debootstrap copied from this host does not belong in the image.
rm -rf --one-file-system "${root:?}/dev"
install -d -m 0755 "$root/dev"
: >"$root/etc/resolv.conf"
printf 'codebox\n' >"$root/etc/hostname"

# File modification times are deliberately preserved (no --mtime clamping):
# Python validates each .pyc against its source's mtime, so changing them
# would make every cached module stale.
step "writing $output"
tar --create --file="$partial_output" --directory="$root" \
    --numeric-owner --sort=name --one-file-system \
    --xattrs --xattrs-include='security.capability' .
mv -f -- "$partial_output" "$output"
step "wrote $output ($(du -h -- "$output" | cut -f1)) after $((SECONDS - started))s"
