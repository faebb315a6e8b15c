#!/usr/bin/env bash
# Writes the files of tests/vectors/format_v1.toml as seeds into
# corpus/decode_file/ (the fuzz target uses the vectors' data key).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/corpus/decode_file"
mkdir -p "$out"
perl -0ne '
  my $n = 0;
  while (/^file = """\n(.*?)"""/msg) {
    (my $hex = $1) =~ s/\s+//g;
    open(my $f, ">:raw", "'"$out"'/vector-" . $n++) or die $!;
    print $f pack("H*", $hex);
  }
  print "wrote $n seeds\n";
' "$here/../tests/vectors/format_v1.toml"
