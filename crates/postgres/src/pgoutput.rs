//! The messages of PostgreSQL's `pgoutput` logical decoding plugin (protocol version 1) that
//! carry rows: Relation, Insert, Update, Delete and Truncate. Begin and Commit are read by
//! `pgwire-replication`; Type and Origin messages are skipped.
//!
//! A tuple is a field count, then per field a kind byte: `n` NULL, `u` an unchanged TOAST value
//! (not sent), `t` text or `b` binary (a length, then the bytes).

/// One field of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change (PostgreSQL does not send it).
    Unchanged,
    /// The value's bytes (text or binary, as the session asked).
    Value(&'a [u8]),
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Its name.
    pub name: String,
    /// Its type's oid.
    pub type_oid: u32,
    /// Its type modifier.
    pub typmod: i32,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A table's description, sent before its first change in a session and after it changed.
    Relation {
        /// Its oid.
        relid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
        /// Its replica identity setting (`d`, `n`, `f` or `i`).
        identity: u8,
        /// Its columns.
        columns: Vec<RelColumn>,
    },
    /// A row inserted.
    Insert {
        /// The table.
        relid: u32,
        /// The new row.
        new: Vec<Field<'a>>,
    },
    /// A row updated: `old` is the old key (`K`) or whole old row (`O`) when sent.
    Update {
        /// The table.
        relid: u32,
        /// The old key or row, when PostgreSQL sent one.
        old: Option<Vec<Field<'a>>>,
        /// The new row.
        new: Vec<Field<'a>>,
    },
    /// A row deleted: its key (`K`) or its whole row (`O`).
    Delete {
        /// The table.
        relid: u32,
        /// The old key or row.
        old: Vec<Field<'a>>,
    },
    /// Tables emptied.
    Truncate {
        /// The tables.
        relids: Vec<u32>,
    },
    /// Anything else (Begin, Commit, Type, Origin, Message): nothing to do here.
    Other(u8),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("pgoutput message cut short".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, String> {
        let end = self.0.iter().position(|&b| b == 0).ok_or("pgoutput string without its terminator")?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Field<'a>>, String> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Field::Null,
                b'u' => Field::Unchanged,
                b't' | b'b' => {
                    let len = self.i32()?;
                    Field::Value(self.take(len.max(0) as usize)?)
                }
                k => return Err(format!("pgoutput tuple field of unknown kind {:?}", k as char)),
            });
        }
        Ok(out)
    }
}

/// Decodes one `pgoutput` message.
pub fn decode(data: &[u8]) -> Result<Message<'_>, String> {
    let mut r = Reader(data);
    let tag = r.u8()?;
    Ok(match tag {
        b'R' => {
            let relid = r.i32()? as u32;
            let namespace = r.string()?;
            let name = r.string()?;
            let identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.i32()? as u32;
                let typmod = r.i32()?;
                columns.push(RelColumn { key: flags & 1 == 1, name, type_oid, typmod });
            }
            Message::Relation {
                relid,
                namespace: if namespace.is_empty() { "pg_catalog".into() } else { namespace },
                name,
                identity,
                columns,
            }
        }
        b'I' => {
            let relid = r.i32()? as u32;
            match r.u8()? {
                b'N' => Message::Insert { relid, new: r.tuple()? },
                k => return Err(format!("pgoutput Insert with {:?} where N was expected", k as char)),
            }
        }
        b'U' => {
            let relid = r.i32()? as u32;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(format!("pgoutput Update with {:?} where N was expected", kind as char));
            }
            Message::Update { relid, old, new: r.tuple()? }
        }
        b'D' => {
            let relid = r.i32()? as u32;
            match r.u8()? {
                b'K' | b'O' => Message::Delete { relid, old: r.tuple()? },
                k => return Err(format!("pgoutput Delete with {:?} where K or O was expected", k as char)),
            }
        }
        b'T' => {
            let n = r.i32()?;
            let _options = r.u8()?;
            let mut relids = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                relids.push(r.i32()? as u32);
            }
            Message::Truncate { relids }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rows() {
        let mut m = vec![b'U'];
        m.extend(16384i32.to_be_bytes());
        m.push(b'K');
        m.extend(2i16.to_be_bytes());
        m.push(b'b');
        m.extend(4i32.to_be_bytes());
        m.extend(7i32.to_be_bytes());
        m.push(b'n');
        m.push(b'N');
        m.extend(2i16.to_be_bytes());
        m.push(b'b');
        m.extend(4i32.to_be_bytes());
        m.extend(8i32.to_be_bytes());
        m.push(b'u');
        let Message::Update { relid, old, new } = decode(&m).unwrap() else { panic!("an update") };
        assert_eq!(relid, 16384);
        assert_eq!(old.unwrap(), vec![Field::Value(&7i32.to_be_bytes()), Field::Null]);
        assert_eq!(new, vec![Field::Value(&8i32.to_be_bytes()), Field::Unchanged]);
        assert!(decode(&m[..m.len() - 3]).is_err(), "a cut message is an error, not a panic");

        let mut rel = vec![b'R'];
        rel.extend(16384i32.to_be_bytes());
        rel.extend(b"public\0t\0d");
        rel.extend(1i16.to_be_bytes());
        rel.push(1);
        rel.extend(b"id\0");
        rel.extend(23i32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation { name, columns, .. } = decode(&rel).unwrap() else { panic!("a relation") };
        assert_eq!(name, "t");
        assert_eq!(columns, vec![RelColumn { key: true, name: "id".into(), type_oid: 23, typmod: -1 }]);
    }
}
