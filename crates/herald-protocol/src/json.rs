//! JSON reading that every codec and the HTTP API share, so one rule holds everywhere
//! (docs/protocol.md, "JSON"):
//!
//! - **Strings** may use any escape JSON allows (`\/`, `\u0061`, ...), in values and in keys.
//!   They are borrowed from the frame when they have none and decoded into a copy when they do.
//! - **A repeated member** of a request object is refused with a message naming it, never
//!   resolved silently (first wins in one parser, last in another: a proxy or an auth hook
//!   reading the same text could see another request than Herald).
//!
//! Only the top level of a request is read here; nested `data` is the application's and is
//! passed on verbatim.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON string: borrowed when it has no escapes, decoded otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// `raw` as a string, if it is one.
pub fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// `raw` as an array of strings, if it is one.
pub fn strings(raw: &RawValue) -> Option<Vec<Cow<'_, str>>> {
    serde_json::from_str::<Vec<Str>>(raw.get())
        .ok()
        .map(|v| v.into_iter().map(|s| s.0).collect())
}

/// Why a text is not a request object.
#[derive(Debug)]
pub enum ObjectError {
    /// Not JSON at all.
    Syntax(serde_json::Error),
    /// JSON, but not an object.
    NotObject,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ObjectError::Syntax(e) => write!(f, "invalid JSON: {e}"),
            ObjectError::NotObject => f.write_str("the body must be a JSON object"),
        }
    }
}

/// The members of a request object that a codec reads, each kept raw, and the first member
/// that appeared twice, if any.
#[derive(Debug)]
pub struct Members<'a, const N: usize> {
    /// In the order of the names asked for; the first occurrence of a repeated one.
    pub values: [Option<&'a RawValue>; N],
    /// The first of `names` that appeared more than once (its decoded key).
    pub repeated: Option<&'static str>,
}

/// Reads the object `text` and keeps the members called `names` (keys compared after
/// decoding their escapes). Other members are skipped, repetitions included. The whole text is
/// read even past a repeated member, so a codec can still echo the request's `id`.
pub fn members<'a, const N: usize>(
    text: &'a str,
    names: &[&'static str; N],
) -> Result<Members<'a, N>, ObjectError> {
    struct V<'n, const N: usize>(&'n [&'static str; N]);
    impl<'de, const N: usize> Visitor<'de> for V<'_, N> {
        type Value = Members<'de, N>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Members {
                values: [None; N],
                repeated: None,
            };
            while let Some(key) = map.next_key::<Str<'de>>()? {
                match self.0.iter().position(|n| *n == key.0) {
                    Some(i) => {
                        let value: &'de RawValue = map.next_value()?;
                        if out.values[i].is_some() {
                            out.repeated.get_or_insert(self.0[i]);
                        } else {
                            out.values[i] = Some(value);
                        }
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de
        .deserialize_map(V(names))
        .and_then(|m| de.end().map(|()| m));
    read.map_err(classify)
}

/// Every top-level member of the object `text`, parsed, refusing a repeated key: for bodies
/// read as a whole (admin ops, CloudEvents). Errors name the repeated key.
pub fn unique_object(text: &str) -> Result<Map<String, Value>, UniqueError> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Result<Map<String, Value>, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Map::new();
            let mut repeated = None;
            while let Some(key) = map.next_key::<String>()? {
                let value: Value = map.next_value()?;
                if out.contains_key(&key) {
                    repeated.get_or_insert(key);
                } else {
                    out.insert(key, value);
                }
            }
            Ok(match repeated {
                Some(key) => Err(key),
                None => Ok(out),
            })
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let read = de.deserialize_map(V).and_then(|m| de.end().map(|()| m));
    match read {
        Ok(Ok(map)) => Ok(map),
        Ok(Err(key)) => Err(UniqueError::Repeated(key)),
        Err(e) => Err(UniqueError::Object(classify(e))),
    }
}

/// Why [`unique_object`] refused a text.
#[derive(Debug)]
pub enum UniqueError {
    Object(ObjectError),
    /// This key appeared more than once.
    Repeated(String),
}

/// Publication data as text, for the dialects whose messages are text: a JSON string's
/// content, else the JSON itself. A string no UTF-8 text can hold (a lone surrogate escape,
/// `"\ud800"`: valid JSON, no valid Unicode) is passed on as the JSON it was sent as, so
/// nothing is lost.
pub fn data_text(data: &[u8]) -> Cow<'_, str> {
    if data.first() == Some(&b'"')
        && let Ok(s) = serde_json::from_slice::<String>(data)
    {
        return s.into();
    }
    String::from_utf8_lossy(data)
}

/// The key of serde's own "duplicate field" refusal, for bodies read straight into a struct
/// (serde refuses a repeated field of a struct itself; this gives it the common message).
pub fn repeated_in(e: &serde_json::Error) -> Option<String> {
    let msg = e.to_string();
    let rest = msg.strip_prefix("duplicate field `")?;
    rest.split('`').next().map(str::to_string)
}

fn classify(e: serde_json::Error) -> ObjectError {
    match e.classify() {
        serde_json::error::Category::Data => ObjectError::NotObject,
        _ => ObjectError::Syntax(e),
    }
}

/// The message for a repeated member, the same in every protocol.
pub fn repeated_message(key: &str) -> String {
    format!(
        "field {:?} appears more than once",
        herald_core::ids::truncate(key, 64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_as_text_decodes_strings_and_keeps_other_json() {
        assert_eq!(data_text(br#""a\nb\u00e9""#), "a\nb\u{e9}");
        assert_eq!(data_text(br#""\ud83d\ude00""#), "\u{1F600}");
        assert_eq!(data_text(br#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(data_text(b"42"), "42");
        // No UTF-8 text holds a lone surrogate: the JSON as sent, nothing lost.
        assert_eq!(data_text(br#""x\ud800y""#), r#""x\ud800y""#);
    }

    #[test]
    fn strings_with_and_without_escapes() {
        let raw = |t: &str| RawValue::from_string(t.to_string()).unwrap();
        assert!(matches!(
            string(&raw(r#""plain""#)),
            Some(Cow::Borrowed("plain"))
        ));
        assert_eq!(string(&raw(r#""chat\/room""#)).unwrap(), "chat/room");
        assert_eq!(string(&raw(r#""\u0061b""#)).unwrap(), "ab");
        assert_eq!(string(&raw(r#""\ud83d\ude00""#)).unwrap(), "\u{1F600}");
        assert_eq!(string(&raw("1")), None);
        assert_eq!(
            strings(&raw(r#"["a","b\/c","\u0064"]"#)).unwrap(),
            vec!["a", "b/c", "d"]
        );
        assert_eq!(strings(&raw(r#"["a",1]"#)), None);
    }

    #[test]
    fn members_decode_keys_and_report_the_first_repeat() {
        let m = members(
            r#"{"\u006fp":"ping","x":[1,{"op":2}],"id":7}"#,
            &["op", "id"],
        )
        .unwrap();
        assert_eq!(m.values[0].unwrap().get(), r#""ping""#);
        assert_eq!(m.values[1].unwrap().get(), "7");
        assert_eq!(m.repeated, None);
        let m = members(r#"{"op":"a","id":1,"op":"b","x":1,"x":2}"#, &["op", "id"]).unwrap();
        assert_eq!(m.repeated, Some("op"));
        assert_eq!(m.values[0].unwrap().get(), r#""a""#);
        assert_eq!(m.values[1].unwrap().get(), "1", "the id is still read");
        assert!(matches!(
            members("[1]", &["op"]),
            Err(ObjectError::NotObject)
        ));
        assert!(matches!(
            members("{\"op\":", &["op"]),
            Err(ObjectError::Syntax(_))
        ));
        assert!(matches!(
            members("{} x", &["op"]),
            Err(ObjectError::Syntax(_))
        ));
    }

    #[test]
    fn unique_objects_name_the_repeated_key() {
        let map = unique_object(r#"{"a":1,"b\/c":{"a":1}}"#).unwrap();
        assert_eq!(map["b/c"], serde_json::json!({"a":1}));
        assert!(matches!(
            unique_object(r#"{"a":1,"\u0061":2}"#),
            Err(UniqueError::Repeated(k)) if k == "a"
        ));
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Body {
            name: String,
        }
        let e = serde_json::from_str::<Body>(r#"{"name":"a","name":"b"}"#).unwrap_err();
        assert_eq!(repeated_in(&e).as_deref(), Some("name"));
        assert!(matches!(
            unique_object("3"),
            Err(UniqueError::Object(ObjectError::NotObject))
        ));
    }
}
