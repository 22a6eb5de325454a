//! Is a transcript heard over the answer the answer itself? Echo cancellation lets short
//! bursts of the assistant's voice through in echoic rooms, and whisper makes words of
//! them: garbled bits of what was being said ("on the smooth left." for "…on the smooth
//! planks."). Such a transcript must not interrupt the answer it came from.
//!
//! The test is a fuzzy match of the transcript against the words being spoken: the best
//! run of about as many words of the recent sentences, by edit distance over their
//! letters. Short transcripts ("stop", "wait, no") are never taken for the answer's echo,
//! however alike: a person's short command matters most.

/// Fewest words a transcript needs before it can be taken for the answer's own voice.
pub const MIN_WORDS: usize = 3;
/// Similarity (1 − edit distance / length) from which it is.
pub const MIN_SIMILARITY: f64 = 0.5;

/// Words as the match sees them: lower case, letters, digits and apostrophes.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// How alike `heard` is to the most alike run of words in `said` (0–1): runs of one word
/// fewer to one more than `heard` has, compared letter by letter.
pub fn similarity(heard: &str, said: &str) -> f64 {
    similarity_of(&words(heard), said)
}

fn similarity_of(heard: &[String], said: &str) -> f64 {
    let said = words(said);
    if heard.is_empty() || said.is_empty() {
        return 0.0;
    }
    let h = heard.join(" ");
    let mut best = 0.0f64;
    for n in heard.len().saturating_sub(1).max(1)..=heard.len() + 1 {
        for run in said.windows(n.min(said.len())) {
            best = best.max(strsim::normalized_levenshtein(&h, &run.join(" ")));
        }
    }
    best
}

/// `heard` is the answer's own voice: long enough, and like a run of what `said`.
pub fn is_own_voice(heard: &str, said: &str) -> bool {
    let heard = words(heard);
    heard.len() >= MIN_WORDS && similarity_of(&heard, said) >= MIN_SIMILARITY
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAID: &str =
        "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.";

    #[test]
    fn garbled_bits_of_the_answer_are_its_own_voice() {
        // What whisper made of bursts of this answer (coda bench echo, bare rooms).
        for heard in [
            "on the smooth left.",
            "the smooth lens",
            "The Dark Blueback Drum.",
            "Glue the sheet.",
        ] {
            assert!(
                is_own_voice(heard, SAID),
                "{heard}: {}",
                similarity(heard, SAID)
            );
        }
    }

    #[test]
    fn what_people_say_over_it_is_not() {
        for heard in [
            "Stop and set a timer for 10 minutes.",
            "What is the weather like in Paris tomorrow?",
            "turn off the lights in the living room",
            "what is a birch canoe",
        ] {
            assert!(
                !is_own_voice(heard, SAID),
                "{heard}: {}",
                similarity(heard, SAID)
            );
        }
    }

    #[test]
    fn short_commands_always_count() {
        for heard in ["stop", "the canoe", "smooth planks", ""] {
            assert!(!is_own_voice(heard, SAID), "{heard}");
        }
        assert_eq!(similarity("smooth planks", SAID), 1.0);
    }

    #[test]
    fn nothing_said_matches_nothing() {
        assert_eq!(similarity("on the smooth planks", ""), 0.0);
        assert!(!is_own_voice("on the smooth planks", ""));
        // A run longer than what was said is compared with all of it.
        assert!(similarity("the birch canoe slid on", "the birch canoe") > 0.5);
    }
}
