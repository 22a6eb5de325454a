//! Event-type filters: `*`, exact names and `prefix*` patterns, compiled to a bit mask so
//! the hub's per-event, per-subscriber check is one AND.

use coda_protocol::EventType;

/// A set of event types, one bit per [`EventType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeMask(u64);

// One bit per type must fit the mask.
const _: () = assert!(EventType::ALL.len() <= 64);

impl TypeMask {
    /// Every type.
    pub const ALL: TypeMask = TypeMask(if EventType::ALL.len() == 64 {
        u64::MAX
    } else {
        (1u64 << EventType::ALL.len()) - 1
    });
    /// No type.
    pub const NONE: TypeMask = TypeMask(0);
    /// What a client gets without naming types, and what `*` and `prefix*` patterns
    /// match: every type except the opt-in ones ([`EventType::TtsAudio`]: audio would
    /// flood clients that only display events), which only an exact name subscribes to.
    pub const DEFAULT: TypeMask = TypeMask(Self::ALL.0 & !Self::OPT_IN.0);
    /// Types delivered only to clients that name them exactly.
    pub const OPT_IN: TypeMask = TypeMask(1u64 << (EventType::TtsAudio as u32));

    fn bit(t: EventType) -> u64 {
        1u64 << (t as u32)
    }

    /// Does the mask contain `t`?
    #[inline]
    pub fn contains(self, t: EventType) -> bool {
        self.0 & Self::bit(t) != 0
    }

    /// The raw bits (one per [`EventType`], by discriminant).
    pub fn bits(self) -> u64 {
        self.0
    }

    /// The mask of one type.
    pub fn from_type(t: EventType) -> TypeMask {
        TypeMask(Self::bit(t))
    }

    /// Do the masks share a type?
    pub fn intersects(self, other: TypeMask) -> bool {
        self.0 & other.0 != 0
    }

    /// The union of two masks.
    pub fn union(self, other: TypeMask) -> TypeMask {
        TypeMask(self.0 | other.0)
    }

    /// `self` without the types of `other`.
    pub fn minus(self, other: TypeMask) -> TypeMask {
        TypeMask(self.0 & !other.0)
    }

    /// The type names in the mask, in protocol order.
    pub fn names(self) -> Vec<&'static str> {
        EventType::ALL
            .iter()
            .filter(|t| self.contains(**t))
            .map(|t| t.as_str())
            .collect()
    }

    /// Compiles patterns. Each is `*`, an exact event type, or `prefix*`. A pattern that
    /// matches no known type is an error (it is almost always a typo).
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<TypeMask, FilterError> {
        let mut mask = TypeMask::NONE;
        for p in patterns {
            mask = mask.union(Self::from_pattern(p.as_ref())?);
        }
        Ok(mask)
    }

    /// Compiles one pattern.
    pub fn from_pattern(pattern: &str) -> Result<TypeMask, FilterError> {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(FilterError::Empty);
        }
        let mut bits = 0u64;
        let mut opt_in_only = false;
        match pattern.strip_suffix('*') {
            Some(prefix) => {
                if prefix.contains('*') {
                    return Err(FilterError::BadWildcard(pattern.to_string()));
                }
                for t in EventType::ALL {
                    if t.as_str().starts_with(prefix) {
                        if Self::OPT_IN.contains(*t) {
                            opt_in_only = true;
                        } else {
                            bits |= Self::bit(*t);
                        }
                    }
                }
            }
            None => {
                if pattern.contains('*') {
                    return Err(FilterError::BadWildcard(pattern.to_string()));
                }
                if let Some(t) = EventType::parse(pattern) {
                    bits |= Self::bit(t);
                }
            }
        }
        if bits == 0 {
            if opt_in_only {
                return Err(FilterError::OptIn(pattern.to_string()));
            }
            return Err(FilterError::NoMatch(pattern.to_string()));
        }
        Ok(TypeMask(bits))
    }
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An empty pattern.
    #[error("empty event type pattern")]
    Empty,
    /// `*` somewhere other than at the end.
    #[error("pattern `{0}`: `*` is only allowed at the end (e.g. `stt_*`)")]
    BadWildcard(String),
    /// Matches only opt-in types, which wildcards never select.
    #[error("pattern `{0}` matches only opt-in types (tts_audio): name them exactly")]
    OptIn(String),
    /// Matches no event type of this protocol version.
    #[error("pattern `{0}` matches no event type (see `coda protocol schema` for the list)")]
    NoMatch(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_compile() {
        let m = TypeMask::from_patterns(&["stt_*", "llm_result"]).unwrap();
        assert!(m.contains(EventType::SttResult));
        assert!(m.contains(EventType::SttInterim));
        assert!(m.contains(EventType::LlmResult));
        assert!(!m.contains(EventType::LlmToken));
        assert_eq!(TypeMask::from_pattern("*").unwrap(), TypeMask::DEFAULT);
        assert_eq!(TypeMask::ALL.names().len(), EventType::ALL.len());
    }

    #[test]
    fn tts_audio_is_opt_in() {
        for p in ["*", "tts_*", "tts_a*"] {
            let m = TypeMask::from_pattern(p);
            assert!(
                !m.map(|m| m.contains(EventType::TtsAudio)).unwrap_or(false),
                "{p} selected tts_audio"
            );
        }
        assert!(matches!(
            TypeMask::from_pattern("tts_a*"),
            Err(FilterError::OptIn(_))
        ));
        let m = TypeMask::from_patterns(&["*", "tts_audio"]).unwrap();
        assert_eq!(m, TypeMask::ALL);
        assert!(TypeMask::from_pattern("tts_*")
            .unwrap()
            .contains(EventType::TtsResult));
        assert!(!TypeMask::DEFAULT.contains(EventType::TtsAudio));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert_eq!(TypeMask::from_pattern(" "), Err(FilterError::Empty));
        assert!(matches!(
            TypeMask::from_pattern("llm_resullt"),
            Err(FilterError::NoMatch(_))
        ));
        assert!(matches!(
            TypeMask::from_pattern("*_result"),
            Err(FilterError::BadWildcard(_))
        ));
        assert!(matches!(
            TypeMask::from_pattern("zzz*"),
            Err(FilterError::NoMatch(_))
        ));
    }

    #[test]
    fn minus_and_union() {
        let all = TypeMask::ALL;
        let llm = TypeMask::from_pattern("llm_*").unwrap();
        let rest = all.minus(llm);
        assert!(!rest.contains(EventType::LlmToken));
        assert_eq!(rest.union(llm), all);
    }
}
