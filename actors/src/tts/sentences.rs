//! Splits a token stream into sentences so speech can start on the first complete one.

/// Accumulates streamed text and yields complete sentences.
#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    buf: String,
    /// Cut the first chunk at a clause end too (see [`SentenceSplitter::first_clause`]).
    first_clause: bool,
    /// A chunk has been emitted.
    emitted: bool,
}

/// Words a first clause needs before a `,`/`;`/`:` may end it: a lone "Sure," or "Well,"
/// spoken apart sounds clipped and saves little.
const FIRST_CLAUSE_MIN_WORDS: usize = 3;

/// Abbreviations whose period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "etc.", "e.g.", "i.e.",
    "approx.", "no.",
];

impl SentenceSplitter {
    /// An empty splitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also ends the *first* chunk at a clause end (`,` `;` `:` after at least three
    /// words), so speech starts before the whole first sentence has been generated; later
    /// chunks are whole sentences.
    pub fn first_clause(mut self, on: bool) -> Self {
        self.first_clause = on;
        self
    }

    /// Adds streamed text; returns the sentences it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.sentence_end() {
            let sentence: String = self.buf.drain(..end).collect();
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_string());
                self.emitted = true;
            }
        }
        out
    }

    /// The rest, when the stream ends.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Byte index just past the first sentence end, if the buffer holds one: a `.`, `!`,
    /// `?` (or `…`, or a newline) followed by whitespace — so "3.14" and a trailing "." that
    /// may still be "..." are not cut.
    fn sentence_end(&self) -> Option<usize> {
        let b = &self.buf;
        let mut chars = b.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '\n' {
                let end = i + 1;
                if !b[..i].trim().is_empty() {
                    return Some(end);
                }
                continue;
            }
            if self.first_clause && !self.emitted && matches!(c, ',' | ';' | ':') {
                let next_is_space = chars.peek().is_some_and(|&(_, n)| n.is_whitespace());
                if next_is_space && b[..i].split_whitespace().count() >= FIRST_CLAUSE_MIN_WORDS {
                    return Some(i + 1);
                }
                continue;
            }
            if !matches!(c, '.' | '!' | '?' | '…') {
                continue;
            }
            // Swallow runs like "?!" or "...", and closing quotes/brackets.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if matches!(
                    n,
                    '.' | '!' | '?' | '…' | '"' | '\'' | ')' | ']' | '”' | '’'
                ) {
                    end = j + n.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some(&(_, n)) if n.is_whitespace() => {
                    if c == '.' && self.is_abbreviation(i) {
                        continue;
                    }
                    // Too short to speak alone ("1." in a list): keep going.
                    if b[..end].trim().chars().count() < 3 {
                        continue;
                    }
                    return Some(end);
                }
                _ => {}
            }
        }
        None
    }

    fn is_abbreviation(&self, dot: usize) -> bool {
        let before = &self.buf[..=dot];
        let word_start = before
            .rfind(|c: char| c.is_whitespace())
            .map(|i| i + 1)
            .unwrap_or(0);
        let word = before[word_start..].to_ascii_lowercase();
        ABBREVIATIONS.contains(&word.as_str())
            || (word.len() == 2 && word.as_bytes()[0].is_ascii_uppercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out = Vec::new();
        for t in tokens {
            out.extend(s.push(t));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn the_first_clause_may_start_speech() {
        let run = |tokens: &[&str]| {
            let mut s = SentenceSplitter::new().first_clause(true);
            let mut out = Vec::new();
            for t in tokens {
                out.extend(s.push(t));
            }
            out.extend(s.finish());
            out
        };
        assert_eq!(
            run(&[
                "The capital of France",
                ", Paris,",
                " is lovely. Yes, it is",
                " big, really."
            ]),
            vec![
                "The capital of France,",
                "Paris, is lovely.",
                "Yes, it is big, really."
            ]
        );
        // Too short to stand alone, numbers, and a clause mark not followed by a space.
        assert_eq!(
            run(&["Sure, ok: 1,000 ways. Done."]),
            vec!["Sure, ok: 1,000 ways.", "Done."]
        );
        // Off: whole sentences only.
        assert_eq!(
            split(&["The capital of France, Paris, is lovely."]),
            vec!["The capital of France, Paris, is lovely."]
        );
    }

    #[test]
    fn streams_into_sentences() {
        assert_eq!(
            split(&[
                "Hel",
                "lo there",
                ". How",
                " are you? I am",
                " fine!",
                " Bye"
            ]),
            vec!["Hello there.", "How are you?", "I am fine!", "Bye"]
        );
    }

    #[test]
    fn numbers_abbreviations_and_ellipses() {
        assert_eq!(
            split(&["Pi is 3.14 roughly. Dr. Smith agrees... Mostly."]),
            vec!["Pi is 3.14 roughly.", "Dr. Smith agrees...", "Mostly."]
        );
        assert_eq!(split(&["Wait?! Yes."]), vec!["Wait?!", "Yes."]);
        assert_eq!(
            split(&["He said \"no.\" Then left."]),
            vec!["He said \"no.\"", "Then left."]
        );
    }

    #[test]
    fn first_sentence_is_released_before_the_stream_ends() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("It is noon").is_empty());
        assert!(
            s.push(".").is_empty(),
            "a trailing dot may still become '...'"
        );
        assert_eq!(s.push(" And"), vec!["It is noon."]);
        assert_eq!(s.finish().as_deref(), Some("And"));
    }
}
