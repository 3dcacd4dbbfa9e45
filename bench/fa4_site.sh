# Sourced (bash): FlashAttention 4's staged site (bench/fa4_stage.sh) on the device machine, at /tmp/fa4/site,
# and on PYTHONPATH. The two halves: .fa4a (or /tmp/fa4p, where the first call copied it: a carried path that
# the next call does not carry is removed there) and .fa4b; a site already unpacked by an earlier call is kept.
if [ ! -d /tmp/fa4/site ]; then
  first=.fa4a/part.00
  [ -f "$first" ] || first=/tmp/fa4p/part.00
  if [ ! -f "$first" ] || [ ! -f .fa4b/part.01 ]; then
    echo "FlashAttention 4 not staged: run(carry=[\".fa4a\"], command=\"mkdir -p /tmp/fa4p && cp .fa4a/part.00 /tmp/fa4p/\") first, then carry .fa4b" >&2
    return 1
  fi
  mkdir -p /tmp/fa4 && cat "$first" .fa4b/part.01 | xz -dc | tar -x -C /tmp/fa4 || return 1
fi
# pip --target does not run the cutlass DSL's .pth file: its packages go on the path here
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/fa4/site:/tmp/fa4/site/nvidia_cutlass_dsl/dsl_packages
