//! The name pattern, `worker{{.ID}}.tf.local.`: the name of each ID, the ID of each name, the zone.
//!
//! The pattern is the original plugin's Go template cut down to what it is used for: `{{.ID}}` once,
//! in the first label. Names are lowercase whatever the pattern's case: DNS names are
//! case-insensitive, so `Worker1.TF.local.` and `worker1.tf.local.` are one name and must be one
//! etcd key, or two nodes could hold it at once (the original plugin looks names up lowercased).

use std::fmt;

/// The longest decimal ID (u32::MAX has 10 digits); used to check label lengths up front.
const MAX_ID_DIGITS: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// The first label's text before `{{.ID}}`.
    prefix: String,
    /// The first label's text after `{{.ID}}`.
    suffix: String,
    /// Everything after the first label, with its trailing dot: `tf.local.`.
    zone: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PatternError {
    NoId,
    IdTwice,
    IdNotInFirstLabel,
    NoZone,
    BadTemplate(String),
    EmptyLabel,
    LabelTooLong(String),
    NameTooLong,
    BadCharacter(char),
    DigitAfterId,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::NoId => write!(f, "pattern must contain {{{{.ID}}}}"),
            PatternError::IdTwice => write!(f, "pattern must contain {{{{.ID}}}} only once"),
            PatternError::IdNotInFirstLabel => {
                write!(f, "{{{{.ID}}}} must be in the first label of the pattern")
            }
            PatternError::NoZone => {
                write!(f, "pattern needs a zone after its first label, as in worker{{{{.ID}}}}.tf.local.")
            }
            PatternError::BadTemplate(t) => {
                write!(f, "unsupported template action {{{{{t}}}}}, only {{{{.ID}}}} is known")
            }
            PatternError::EmptyLabel => write!(f, "pattern has an empty label"),
            PatternError::LabelTooLong(l) => write!(f, "label {l:?} is longer than 63 bytes"),
            PatternError::NameTooLong => write!(f, "names from this pattern are longer than 253 bytes"),
            PatternError::BadCharacter(c) => write!(f, "character {c:?} is not allowed in a name"),
            PatternError::DigitAfterId => {
                write!(f, "a digit right after {{{{.ID}}}} would run into the ID; put another character between")
            }
        }
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let open = text.find("{{").ok_or(PatternError::NoId)?;
        let close = text[open..].find("}}").ok_or(PatternError::NoId)? + open;
        let action = text[open + 2..close].trim();
        if action != ".ID" {
            return Err(PatternError::BadTemplate(action.to_string()));
        }
        let prefix = &text[..open];
        let rest = &text[close + 2..];
        if rest.contains("{{") || rest.contains("}}") {
            return Err(PatternError::IdTwice);
        }
        if prefix.contains('.') {
            return Err(PatternError::IdNotInFirstLabel);
        }
        let (suffix, zone) = match rest.find('.') {
            Some(dot) => (&rest[..dot], &rest[dot + 1..]),
            None => (rest, ""),
        };
        let zone = zone.strip_suffix('.').unwrap_or(zone);
        if suffix.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(PatternError::DigitAfterId);
        }
        if zone.is_empty() {
            return Err(PatternError::NoZone);
        }
        for c in prefix.chars().chain(suffix.chars()).chain(zone.chars()) {
            if !is_name_char(c) {
                return Err(PatternError::BadCharacter(c));
            }
        }
        for label in zone.split('.') {
            if label.is_empty() {
                return Err(PatternError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(PatternError::LabelTooLong(label.to_string()));
            }
        }
        let first_label_len = prefix.len() + MAX_ID_DIGITS + suffix.len();
        if first_label_len > 63 {
            return Err(PatternError::LabelTooLong(format!("{prefix}{{{{.ID}}}}{suffix}")));
        }
        // 253 is the longest name in text form without the trailing dot (RFC 1035's 255 in wire form).
        if first_label_len + 1 + zone.len() > 253 {
            return Err(PatternError::NameTooLong);
        }
        Ok(Pattern {
            prefix: prefix.to_ascii_lowercase(),
            suffix: suffix.to_ascii_lowercase(),
            zone: format!("{}.", zone.to_ascii_lowercase()),
        })
    }

    /// The text before `{{.ID}}`: every key this daemon writes starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The text after `{{.ID}}` in the first label.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The zone this pattern's names live in, with its trailing dot: `tf.local.`.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The fully qualified name of `id`, which is also its etcd key: `worker3.tf.local.`.
    pub fn name(&self, id: u32) -> String {
        format!("{}{}{}.{}", self.prefix, id, self.suffix, self.zone)
    }

    /// The ID a name (or etcd key) stands for, if it follows the pattern exactly: `worker03.tf.local.`
    /// does not, because no node would ever write it.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(self.prefix.as_str())?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, tail) = rest.split_at(digits);
        let tail = tail.strip_prefix(self.suffix.as_str())?;
        if tail.strip_prefix('.')? != self.zone {
            return None;
        }
        canonical_id(number.as_bytes())
    }

    /// Whether a name could follow both patterns, or a DNS lookup not tell them apart: then the
    /// two cannot be roles of one cluster. It is exactly when their key ranges overlap, ignoring
    /// case: one prefix is the other, or the other followed by a digit.
    pub fn overlaps(&self, other: &Pattern) -> bool {
        let (a, b) = (self.prefix.to_ascii_lowercase(), other.prefix.to_ascii_lowercase());
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        long.strip_prefix(short.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()))
    }

    /// Whether an etcd key lies in this pattern's key range (it may still not follow the pattern).
    pub fn in_key_range(&self, key: &[u8]) -> bool {
        key.strip_prefix(self.prefix.as_bytes()).is_some_and(|rest| rest.first().is_some_and(u8::is_ascii_digit))
    }

    /// Whether `name` lies below this pattern's zone, whatever its case.
    pub fn in_zone(&self, name: &str) -> bool {
        name.to_ascii_lowercase().strip_suffix(self.zone.as_str()).is_some_and(|rest| rest.ends_with('.'))
    }

    /// The etcd key range `[start, end)` that holds every name of this pattern (and possibly keys that
    /// are not, which `id_of` filters out). IDs start with a digit, and ':' follows '9' in ASCII.
    pub fn key_range(&self) -> (String, String) {
        (format!("{}0", self.prefix), format!("{}:", self.prefix))
    }
}

/// The ID `digits` write as a pattern writes IDs: decimal, without a leading zero, within 32
/// bits. Keys and query names are read by this one rule, so that a name answers exactly when its
/// key would be a member's.
pub fn canonical_id(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{{{.ID}}}}{}.{}", self.prefix, self.suffix, self.zone)
    }
}

/// Hostname characters plus `_` (service labels); anything else would be an unusable etcd key or
/// a name no resolver library accepts.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_patterns() {
        let cases = [
            ("worker{{.ID}}.tf.local.", "worker", "", "tf.local."),
            ("worker{{.ID}}.tf.local", "worker", "", "tf.local."),
            ("worker{{ .ID }}.tf.local.", "worker", "", "tf.local."),
            ("{{.ID}}.nodes.example.", "", "", "nodes.example."),
            ("node-{{.ID}}-a.x.", "node-", "-a", "x."),
            ("Worker{{.ID}}.TF.local.", "worker", "", "tf.local."),
        ];
        for (text, prefix, suffix, zone) in cases {
            let p = Pattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((p.prefix.as_str(), p.suffix.as_str(), p.zone()), (prefix, suffix, zone), "{text}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        let cases = [
            ("worker.tf.local.", PatternError::NoId),
            ("worker{{.ID}}{{.ID}}.tf.local.", PatternError::IdTwice),
            ("worker{{.ID}}.{{.ID}}.local.", PatternError::IdTwice),
            ("a.worker{{.ID}}.tf.local.", PatternError::IdNotInFirstLabel),
            ("worker{{.ID}}", PatternError::NoZone),
            ("worker{{.ID}}.", PatternError::NoZone),
            ("worker{{.Name}}.tf.local.", PatternError::BadTemplate(".Name".into())),
            ("worker{{.ID}}.tf..local.", PatternError::EmptyLabel),
            ("worker{{.ID}}.tf local.", PatternError::BadCharacter(' ')),
            ("worker{{.ID}}.tf/local.", PatternError::BadCharacter('/')),
            ("worker{{.ID}}5.tf.local.", PatternError::DigitAfterId),
        ];
        for (text, want) in cases {
            assert_eq!(Pattern::parse(text), Err(want), "{text}");
        }
        let long_label = format!("{}{{{{.ID}}}}.x.", "a".repeat(60));
        assert!(matches!(Pattern::parse(&long_label), Err(PatternError::LabelTooLong(_))));
        let long_name = format!("w{{{{.ID}}}}.{}", "abcdefghi.".repeat(25));
        assert_eq!(Pattern::parse(&long_name), Err(PatternError::NameTooLong));
    }

    #[test]
    fn names_and_ids_round_trip() {
        let p = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        assert_eq!(p.name(3), "worker3.tf.local.");
        for id in [0, 1, 9, 10, 255, 4_294_967_295] {
            assert_eq!(p.id_of(&p.name(id)), Some(id));
        }
        let p = Pattern::parse("n{{.ID}}x.z.").unwrap();
        assert_eq!(p.name(12), "n12x.z.");
        assert_eq!(p.id_of("n12x.z."), Some(12));
    }

    #[test]
    fn id_of_rejects_names_off_the_pattern() {
        let p = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        for name in [
            "worker03.tf.local.",
            "worker.tf.local.",
            "worker3.tf.local",
            "worker3x.tf.local.",
            "worker3.tf.local.com.",
            "worker3.other.",
            "Worker3.tf.local.",
            "worker99999999999.tf.local.",
            "worker-3.tf.local.",
        ] {
            assert_eq!(p.id_of(name), None, "{name}");
        }
    }

    #[test]
    fn names_in_the_zone() {
        let p = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        for (name, within) in [
            ("worker1.tf.local.", true),
            ("worker2.TF.Local.", true),
            ("tf.local.", false),
            ("worker1.xtf.local.", false),
            ("worker1.jobb.internal.", false),
        ] {
            assert_eq!(p.in_zone(name), within, "{name}");
        }
    }

    #[test]
    fn names_are_lowercase_whatever_the_patterns_case() {
        let p = Pattern::parse("Worker{{.ID}}-GPU.TF.Local").unwrap();
        assert_eq!(p.name(7), "worker7-gpu.tf.local.");
        assert_eq!(p, Pattern::parse("worker{{.ID}}-gpu.tf.local.").unwrap());
        assert_eq!(p.id_of("worker7-gpu.tf.local."), Some(7));
    }

    #[test]
    fn canonical_ids_only() {
        let cases: [(&[u8], Option<u32>); 8] = [
            (b"0", Some(0)),
            (b"7", Some(7)),
            (b"4294967295", Some(u32::MAX)),
            (b"", None),
            (b"00", None),
            (b"07", None),
            (b"4294967296", None),
            (b"1a", None),
        ];
        for (digits, want) in cases {
            assert_eq!(canonical_id(digits), want, "{:?}", String::from_utf8_lossy(digits));
        }
    }

    #[test]
    fn key_range_holds_every_name() {
        let p = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        let (start, end) = p.key_range();
        for id in [0, 1, 9, 10, 99, 1000, u32::MAX] {
            let name = p.name(id);
            assert!(start.as_str() <= name.as_str() && name.as_str() < end.as_str(), "{name}");
        }
    }

    #[test]
    fn overlapping_patterns_are_those_whose_names_could_collide() {
        let p = |text: &str| Pattern::parse(text).unwrap();
        let cases = [
            ("worker{{.ID}}.z.", "ps{{.ID}}.z.", false),
            ("w{{.ID}}.z.", "wx{{.ID}}.z.", false),
            ("w{{.ID}}.z.", "w1x{{.ID}}.z.", true),
            ("n{{.ID}}a.z.", "n{{.ID}}b.z.", true),
            ("Worker{{.ID}}.z.", "worker{{.ID}}.z.", true),
            ("{{.ID}}.z.", "w{{.ID}}.z.", false),
            ("{{.ID}}.z.", "{{.ID}}x.z.", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(p(a).overlaps(&p(b)), want, "{a} {b}");
            assert_eq!(p(b).overlaps(&p(a)), want, "{b} {a}");
        }
        let w = p("w{{.ID}}.z.");
        for (key, want) in
            [(&b"w1.z."[..], true), (b"w12x.y.", true), (b"wx1.z.", false), (b"w", false), (b"v1.z.", false)]
        {
            assert_eq!(w.in_key_range(key), want, "{key:?}");
        }
    }

    #[test]
    fn displays_as_written() {
        let p = Pattern::parse("worker{{ .ID }}.tf.local").unwrap();
        assert_eq!(p.to_string(), "worker{{.ID}}.tf.local.");
    }
}
