#!/usr/bin/env bash
# Fetch the third-party sources the PATCH_EXEC TFLM glue compiles against, with git from
# their upstream repositories at pinned commits, into a cache; print the variables.
#
#   eval "$(bash tools/get_tflm_sources.sh)"             # TFLM_ROOT, TFLM_EXTRA_INCLUDES
#   eval "$(bash tools/get_tflm_sources.sh --arduino)"   # + ARDUINO_TENSORFLOWLITE_SRC
#
# What is laid out (only what the build needs, each with its LICENSE):
#   tflite-micro   tensorflow/tflite-micro 90b983c2b3f1480642e040bbd2ddb37b998f3424: every .h
#                  of tensorflow/, python/, signal/ (the headers the pinned wheel
#                  tflite-micro==0.dev20261002031052 is ABI-compatible with)
#   flatbuffers    google/flatbuffers v25.9.23 (the version that TFLM pins): include/
#   gemmlowp       google/gemmlowp 16e8662c34917be0065110bfcd9cc27d30f52fdf: fixedpoint/, internal/
#   Arduino_TensorFlowLite (--arduino)
#                  tensorflow/tflite-micro-arduino-examples 7948b85e020470a30a83bf00e10fc43b486bfcba:
#                  src/ (TFLM of February 2023 with CMSIS-NN), library.properties
#
# Options:
#   --base-url URL  where OWNER/NAME repositories live (default https://github.com; a
#                   file:// URL or a local directory of OWNER/NAME git repositories works)
#   --cache DIR     default ~/.cache/tflm_patch/third_party
#   --arduino       also Arduino_TensorFlowLite
# The pins can be overridden (e.g. to try another TFLM) with the environment variables
# TFLM_COMMIT, FLATBUFFERS_REF, GEMMLOWP_COMMIT, ARDUINO_EXAMPLES_COMMIT.
#
# Each source lands in CACHE/NAME-REF/ (published atomically; reused when complete).
# Progress goes to stderr; stdout carries only the `export` lines.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(fetch ...) stops the script

TFLM_COMMIT=${TFLM_COMMIT:-90b983c2b3f1480642e040bbd2ddb37b998f3424}
FLATBUFFERS_REF=${FLATBUFFERS_REF:-v25.9.23}
GEMMLOWP_COMMIT=${GEMMLOWP_COMMIT:-16e8662c34917be0065110bfcd9cc27d30f52fdf}
ARDUINO_EXAMPLES_COMMIT=${ARDUINO_EXAMPLES_COMMIT:-7948b85e020470a30a83bf00e10fc43b486bfcba}

base_url=https://github.com
cache=${HOME}/.cache/tflm_patch/third_party
arduino=0

usage() {
  echo "usage: $0 [--base-url URL] [--cache DIR] [--arduino]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --base-url) [ $# -ge 2 ] || usage; base_url=${2%/}; shift 2 ;;
    --cache) [ $# -ge 2 ] || usage; cache=$2; shift 2 ;;
    --arduino) arduino=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) usage ;;
  esac
done

command -v git >/dev/null || { echo "error: git is not installed" >&2; exit 1; }
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

say() { echo "$*" >&2; }

# fetch NAME OWNER/REPO REF TAR_PATTERNS... -- ARCHIVE_PATHS...
# Fetches REF (a commit or a tag) alone, shallow, into CACHE/.git/NAME.git, then extracts
# ARCHIVE_PATHS of that commit, keeping only members matching TAR_PATTERNS, into
# CACHE/NAME-REF. Prints that directory.
fetch() {
  local name=$1 repo=$2 ref=$3
  shift 3
  local patterns=() paths=()
  while [ "$1" != "--" ]; do patterns+=("$1"); shift; done
  shift
  paths=("$@")
  local dest="$cache/$name-$ref"
  if [ -f "$dest/.tflm_patch_source" ]; then
    say "$name: $ref already in $dest"
    echo "$dest"
    return
  fi
  local git_dir="$cache/.git/$name.git" url="$base_url/$repo"
  [ -d "$git_dir" ] || git init -q --bare "$git_dir"
  say "$name: fetching $ref from $url"
  git --git-dir="$git_dir" fetch -q --depth 1 "$url" "$ref" >&2
  local commit
  commit=$(git --git-dir="$git_dir" rev-parse "FETCH_HEAD^{commit}")
  local work
  work=$(mktemp -d "$cache/.$name.XXXXXX")
  git --git-dir="$git_dir" archive --format=tar "$commit" -- "${paths[@]}" \
    | tar -x -C "$work" --wildcards "${patterns[@]}"
  printf '%s %s %s\n' "$repo" "$ref" "$commit" >"$work/.tflm_patch_source"
  rm -rf "$dest"
  mv "$work" "$dest"
  say "$name: $commit laid out in $dest"
  echo "$dest"
}

tflm=$(fetch tflite-micro tensorflow/tflite-micro "$TFLM_COMMIT" \
  '*.h' LICENSE -- LICENSE tensorflow python signal)
flatbuffers=$(fetch flatbuffers google/flatbuffers "$FLATBUFFERS_REF" \
  'include/*' LICENSE -- LICENSE include)
gemmlowp=$(fetch gemmlowp google/gemmlowp "$GEMMLOWP_COMMIT" \
  'fixedpoint/*' 'internal/*' LICENSE -- LICENSE fixedpoint internal)

echo "export TFLM_ROOT=$tflm"
echo "export TFLM_EXTRA_INCLUDES=$flatbuffers/include:$gemmlowp"

if [ "$arduino" = 1 ]; then
  arduino_dir=$(fetch Arduino_TensorFlowLite tensorflow/tflite-micro-arduino-examples \
    "$ARDUINO_EXAMPLES_COMMIT" 'src/*' library.properties LICENSE -- \
    LICENSE library.properties src)
  echo "export ARDUINO_TENSORFLOWLITE_SRC=$arduino_dir/src"
fi
