#!/bin/bash
# Packs gpu-carry/ (ignored by git) for a GPU machine that has the NVIDIA
# driver and cuBLAS but none of our build: the five binaries of BUILD_DIR,
# every shared library they load but glibc's (cuBLAS is loaded at run time,
# from the machine), the demo model, and gpu-carry/run.sh, which puts the
# binaries where tests/gpu/run.sh looks and runs it with its arguments.
#
#   tests/gpu/make_carry.sh [BUILD_DIR]
#   then, with the device tool: command "bash gpu-carry/run.sh [all|stream|kv]",
#   carry ["gpu-carry"]; the report comes back under $OUT.
set -eu
build=${1:-build}
cd "$(dirname "$0")/../.."
bins="$build/tools/mixtral-run/mixtral-run $build/tests/gpu/mixtral-gpu-check $build/daemon/mixtrald $build/client/mixtral
      $build/bench/kv-bench"
for b in $bins; do
        [ -x "$b" ] || { echo "make_carry: $b is missing: build with CUDA first (meson compile -C $build)" >&2; exit 1; }
done
[ -f "$build/demo-model/config.json" ] || { echo "make_carry: $build/demo-model is missing" >&2; exit 1; }
rm -rf gpu-carry
mkdir -p gpu-carry/bin gpu-carry/lib
# shellcheck disable=SC2086
cp $bins gpu-carry/bin/
# shellcheck disable=SC2086
for lib in $(ldd $bins | awk '/=> \// { print $3 }' | sort -u); do
        case "$(basename "$lib")" in
        libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libgcc_s.so*) ;;
        *) cp -L "$lib" gpu-carry/lib/ ;;
        esac
done
cp -r "$build/demo-model" gpu-carry/demo-model
cat >gpu-carry/run.sh <<'RUN'
#!/bin/bash
# Made by tests/gpu/make_carry.sh: the carried binaries into build/, then
# tests/gpu/run.sh with this script's arguments.
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=$PWD/gpu-carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p build/tools/mixtral-run build/tests/gpu build/daemon build/client build/bench
cp gpu-carry/bin/mixtral-run build/tools/mixtral-run/
cp gpu-carry/bin/mixtral-gpu-check build/tests/gpu/
cp gpu-carry/bin/mixtrald build/daemon/
cp gpu-carry/bin/mixtral build/client/
cp gpu-carry/bin/kv-bench build/bench/
echo "commit (of the tree that built them): @COMMIT@"
MX_COMMIT=@COMMIT@ MX_DEMO_MODEL=gpu-carry/demo-model exec tests/gpu/run.sh "$@"
RUN
sed -i "s/@COMMIT@/$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)/g" gpu-carry/run.sh
chmod +x gpu-carry/run.sh
size=$(du -sm gpu-carry | cut -f1)
echo "gpu-carry: ${size} MiB ($(ls gpu-carry/lib | wc -l) libraries)"
[ "$size" -lt 64 ] || { echo "make_carry: over the device tool's 64 MiB" >&2; exit 1; }
