//! Word error rate: the measure of `coda bench stt --corpus` and the speech tests.

/// A number below 100 in words (`25` → `twenty five`), as speech-to-text references are
/// written; `None` above.
pub fn number_word(n: u64) -> Option<String> {
    const ONES: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 10] = [
        "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
    ];
    match n {
        0..=19 => Some(ONES[n as usize].to_string()),
        20..=99 if n.is_multiple_of(10) => Some(TENS[(n / 10) as usize].to_string()),
        20..=99 => Some(format!(
            "{} {}",
            TENS[(n / 10) as usize],
            ONES[(n % 10) as usize]
        )),
        _ => None,
    }
}

/// Lower case, no punctuation, numbers as words.
pub fn normalise(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split_whitespace() {
        let w: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .collect::<String>()
            .to_lowercase();
        if w.is_empty() {
            continue;
        }
        match w.parse::<u64>().ok().and_then(number_word) {
            Some(words) => out.extend(words.split(' ').map(str::to_string)),
            None => out.push(w),
        }
    }
    out
}

/// Word-level edit distance (substitutions + deletions + insertions).
pub fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[hypothesis.len()]
}

/// Word error rate of `hypothesis` against `reference`, 0–1 (or more with insertions).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = normalise(reference);
    word_errors(&r, &normalise(hypothesis)) as f64 / r.len().max(1) as f64
}
