"""Sizes as spillway writes them (`256MiB`, `1GiB`, `1.5GB`, bytes), for the benchmark scripts."""
import re

UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text):
    """Bytes in `text`; exits with a message on a size spillway would not accept."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise SystemExit(f"bad size {text!r}: use e.g. 256MiB, 1GiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])
