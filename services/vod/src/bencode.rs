//! Bencoding (BEP 3): what torrent files and tracker answers are written in.

use std::collections::BTreeMap;

/// A bencoded value. Dictionary keys are byte strings, kept sorted as the encoding requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    pub fn text(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Value::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.push(b'l');
                for item in items {
                    item.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(entries) => {
                out.push(b'd');
                for (k, v) in entries {
                    Value::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The entry `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// Decodes one value that spans all of `input`.
pub fn decode(input: &[u8]) -> Result<Value, String> {
    let (value, rest) = decode_one(input, 0)?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the value", rest.len()));
    }
    Ok(value)
}

/// Nesting deeper than this is refused (a hostile input cannot exhaust the stack).
const MAX_DEPTH: usize = 64;

fn decode_one(input: &[u8], depth: usize) -> Result<(Value, &[u8]), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deep".into());
    }
    match input.first() {
        Some(b'i') => {
            let end = input
                .iter()
                .position(|&c| c == b'e')
                .ok_or("an integer without its end")?;
            let text = std::str::from_utf8(&input[1..end]).map_err(|_| "a bad integer")?;
            let i = text
                .parse()
                .map_err(|_| format!("`{text}` is not an integer"))?;
            Ok((Value::Int(i), &input[end + 1..]))
        }
        Some(b'l') => {
            let mut rest = &input[1..];
            let mut items = Vec::new();
            while rest.first() != Some(&b'e') {
                let (item, after) = decode_one(rest, depth + 1)?;
                items.push(item);
                rest = after;
            }
            Ok((Value::List(items), &rest[1..]))
        }
        Some(b'd') => {
            let mut rest = &input[1..];
            let mut entries = BTreeMap::new();
            while rest.first() != Some(&b'e') {
                let (key, after) = decode_one(rest, depth + 1)?;
                let Value::Bytes(key) = key else {
                    return Err("a dictionary key that is not a string".into());
                };
                let (value, after) = decode_one(after, depth + 1)?;
                entries.insert(key, value);
                rest = after;
            }
            Ok((Value::Dict(entries), &rest[1..]))
        }
        Some(b'0'..=b'9') => {
            let colon = input
                .iter()
                .position(|&c| c == b':')
                .ok_or("a string without its length")?;
            let len: usize = std::str::from_utf8(&input[..colon])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or("a bad string length")?;
            let start = colon + 1;
            let end = start.checked_add(len).ok_or("a bad string length")?;
            if end > input.len() {
                return Err("a string longer than the input".into());
            }
            Ok((Value::Bytes(input[start..end].to_vec()), &input[end..]))
        }
        Some(c) => Err(format!("unexpected byte {c:#04x}")),
        None => Err("the input ended early".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_keys_are_sorted() {
        let v = Value::dict([
            ("zeta", Value::Int(-3)),
            ("alpha", Value::List(vec![Value::text("x"), Value::Int(7)])),
        ]);
        let bytes = v.encode();
        assert_eq!(bytes, b"d5:alphal1:xi7ee4:zetai-3ee");
        assert_eq!(decode(&bytes).unwrap(), v);
    }

    #[test]
    fn malformed_input_is_refused_not_panicked_on() {
        for bad in [
            &b"i12"[..],
            b"5:abc",
            b"d1:a",
            b"l",
            b"x",
            b"di1ei2ee",
            b"99999999999999999999999:a",
        ] {
            assert!(decode(bad).is_err(), "{:?} was accepted", bad);
        }
        let deep = "l".repeat(1000) + &"e".repeat(1000);
        assert!(decode(deep.as_bytes()).is_err());
    }
}
