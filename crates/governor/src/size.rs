//! Byte sizes as users write them (`4GiB`, `512MiB`, `1.5GB`, `60%`) and as we print them.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;
const TIB: u64 = GIB * 1024;

/// A number of bytes, printed with binary units (`4GiB`, `1.5MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let (unit, div) = match b {
            b if b >= TIB => ("TiB", TIB),
            b if b >= GIB => ("GiB", GIB),
            b if b >= MIB => ("MiB", MIB),
            b if b >= KIB => ("KiB", KIB),
            _ => return write!(f, "{b}B"),
        };
        let v = b as f64 / div as f64;
        if (v - v.round()).abs() < 0.005 {
            write!(f, "{}{unit}", v.round() as u64)
        } else {
            write!(f, "{v:.2}{unit}")
        }
    }
}

/// Formats a byte count the way spillway prints sizes everywhere (`4GiB`).
pub fn fmt_bytes(bytes: impl TryInto<u64>) -> String {
    ByteSize(bytes.try_into().unwrap_or(u64::MAX)).to_string()
}

impl FromStr for ByteSize {
    type Err = Error;

    /// Parses `123`, `4GiB`, `4G`, `4GB` (decimal), `512 MiB`, `1.5g`. Case-insensitive.
    fn from_str(input: &str) -> Result<Self> {
        let err = |reason: &str| Error::InvalidSize { input: input.to_string(), reason: reason.to_string() };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(err("it must start with a number"));
        }
        let value: f64 = num.parse().map_err(|_| err("not a number"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => GIB,
            "t" | "tib" => TIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(err("unknown unit (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")),
        };
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err(err("too large"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

/// How much memory spillway may use: a fixed size, or a share of the effective limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemorySpec {
    /// An absolute number of bytes.
    Bytes(ByteSize),
    /// A percentage (0 < p <= 100) of the effective memory limit.
    Percent(f64),
}

impl FromStr for MemorySpec {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let s = input.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| Error::InvalidSize { input: input.to_string(), reason: "not a percentage".into() })?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(Error::InvalidSize {
                    input: input.to_string(),
                    reason: "a percentage must be above 0% and at most 100%".into(),
                });
            }
            return Ok(MemorySpec::Percent(v));
        }
        s.parse().map(MemorySpec::Bytes)
    }
}

impl fmt::Display for MemorySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySpec::Bytes(b) => write!(f, "{b}"),
            MemorySpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("4GiB".parse::<ByteSize>().unwrap().0, 4 * GIB);
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().0, 512 * MIB);
        assert_eq!("512 mib".parse::<ByteSize>().unwrap().0, 512 * MIB);
        assert_eq!("1.5g".parse::<ByteSize>().unwrap().0, 3 * GIB / 2);
        assert_eq!("2GB".parse::<ByteSize>().unwrap().0, 2_000_000_000);
        assert_eq!("1024".parse::<ByteSize>().unwrap().0, 1024);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "GiB", "4XB", "-1GiB", "1..2G", "abc"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} should not parse");
        }
        for bad in ["0%", "101%", "x%"] {
            assert!(bad.parse::<MemorySpec>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn percent_and_display() {
        assert_eq!("60%".parse::<MemorySpec>().unwrap(), MemorySpec::Percent(60.0));
        assert_eq!(ByteSize(4 * GIB).to_string(), "4GiB");
        assert_eq!(ByteSize(3 * MIB / 2).to_string(), "1.50MiB");
        assert_eq!(ByteSize(100).to_string(), "100B");
    }
}
