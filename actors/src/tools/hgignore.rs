//! Mercurial's `.hgignore` (the `ignore` crate reads `.gitignore` and `.ignore`, not
//! this): `syntax: regexp|glob|rootglob` sections and `re:`/`glob:`/`rootglob:`/`path:`
//! prefixed lines, regexp by default. As in Mercurial, a pattern that matches a
//! directory ignores everything under it, regexps and globs match anywhere in the path
//! unless rooted, and a pattern that does not compile is skipped (logged), not fatal.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobMatcher};
use regex::Regex;

#[derive(Debug)]
enum Rule {
    Regex(Regex),
    Glob(GlobMatcher),
    /// A root-relative path prefix (`path:`).
    Prefix(String),
}

/// The rules of one `.hgignore`.
#[derive(Debug, Default)]
pub struct HgIgnore {
    rules: Vec<Rule>,
}

#[derive(Clone, Copy)]
enum Syntax {
    Regexp,
    Glob,
    RootGlob,
}

fn glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
}

impl HgIgnore {
    /// The `.hgignore` at the root of `root`, if any (an unreadable one counts as none).
    pub fn load(root: &Path) -> HgIgnore {
        match std::fs::read_to_string(root.join(".hgignore")) {
            Ok(text) => HgIgnore::parse(&text),
            Err(_) => HgIgnore::default(),
        }
    }

    /// Parses the text of an `.hgignore`.
    pub fn parse(text: &str) -> HgIgnore {
        let mut syntax = Syntax::Regexp;
        let mut rules = Vec::new();
        for raw in text.lines() {
            // `#` starts a comment unless escaped as `\#`.
            let mut line = String::new();
            let mut chars = raw.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'#') => {
                        line.push('#');
                        chars.next();
                    }
                    '#' => break,
                    c => line.push(c),
                }
            }
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            if let Some(s) = line.strip_prefix("syntax:") {
                syntax = match s.trim() {
                    "regexp" | "re" => Syntax::Regexp,
                    "glob" | "relglob" => Syntax::Glob,
                    "rootglob" => Syntax::RootGlob,
                    other => {
                        tracing::debug!(syntax = other, ".hgignore: unknown syntax, kept the last");
                        syntax
                    }
                };
                continue;
            }
            let (kind, pattern) = match line.split_once(':') {
                Some(("re" | "regexp" | "relre", p)) => (Some(Syntax::Regexp), p),
                Some(("glob" | "relglob", p)) => (Some(Syntax::Glob), p),
                Some(("rootglob", p)) => (Some(Syntax::RootGlob), p),
                Some(("path" | "relpath", p)) => {
                    rules.push(Rule::Prefix(p.trim_matches('/').to_string()));
                    continue;
                }
                _ => (None, line),
            };
            let rule = match kind.unwrap_or(syntax) {
                Syntax::Regexp => Regex::new(pattern)
                    .map(Rule::Regex)
                    .map_err(|e| e.to_string()),
                Syntax::Glob => glob(&format!("**/{pattern}"))
                    .map(Rule::Glob)
                    .map_err(|e| e.to_string()),
                Syntax::RootGlob => glob(pattern).map(Rule::Glob).map_err(|e| e.to_string()),
            };
            match rule {
                Ok(r) => rules.push(r),
                Err(e) => tracing::debug!(pattern, error = %e, ".hgignore: pattern skipped"),
            }
        }
        HgIgnore { rules }
    }

    /// No rules at all?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Is `rel` (root-relative, `/`-separated) or one of its parent directories ignored?
    /// A directory is also tried with a trailing `/` (so `^build/` ignores `build`).
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if self.rules.is_empty() || rel.is_empty() {
            return false;
        }
        let as_dir = format!("{rel}/");
        let mut prefixes = rel
            .match_indices('/')
            .map(|(i, _)| &rel[..=i])
            .chain(rel.match_indices('/').map(|(i, _)| &rel[..i]))
            .collect::<Vec<_>>();
        prefixes.push(rel);
        if is_dir {
            prefixes.push(&as_dir);
        }
        self.rules.iter().any(|rule| match rule {
            // A regexp is searched in the whole path, as Mercurial does.
            Rule::Regex(re) => prefixes.iter().any(|p| re.is_match(p)),
            Rule::Glob(g) => prefixes.iter().any(|p| g.is_match(p)),
            Rule::Prefix(p) => prefixes.iter().any(|q| q.trim_end_matches('/') == p),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HgIgnore {
        fn is_ignored_file(&self, rel: &str) -> bool {
            self.is_ignored(rel, false)
        }
    }

    #[test]
    fn regexp_by_default_glob_sections_and_prefixes() {
        let h = HgIgnore::parse(
            "# comment\n\\.orig$\nsyntax: glob\n*.pyc\nbuild\nrootglob:docs/*.tmp\nre:^secret/\npath:vendor/lib\n",
        );
        assert!(h.is_ignored_file("a/b/file.orig"));
        assert!(h.is_ignored_file("x.pyc") && h.is_ignored_file("pkg/sub/x.pyc"));
        assert!(
            h.is_ignored_file("build") && h.is_ignored_file("src/build/out.o"),
            "a directory ignores its contents"
        );
        assert!(
            h.is_ignored_file("docs/a.tmp") && !h.is_ignored_file("src/docs/a.tmp"),
            "rootglob is rooted"
        );
        assert!(h.is_ignored_file("secret/key") && !h.is_ignored_file("not/secret/key"));
        assert!(
            h.is_ignored("secret", true) && !h.is_ignored("secret", false),
            "dirs get a `/`"
        );
        assert!(h.is_ignored_file("vendor/lib/x.c") && !h.is_ignored_file("vendor/library.c"));
        assert!(
            !h.is_ignored_file("src/main.rs") && !h.is_ignored_file("pyc/main.rs"),
            "{h:?}"
        );
    }

    #[test]
    fn bad_patterns_are_skipped() {
        let h = HgIgnore::parse("re:(unclosed\nsyntax: glob\n[z-a]\n*.log\n");
        assert!(h.is_ignored_file("x.log"));
        assert!(!h.is_ignored_file("x.txt"));
    }
}
