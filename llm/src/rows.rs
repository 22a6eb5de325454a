//! Per-token work between the matmuls of a prompt pass (norms, activation quantising,
//! RoPE, gating) split over the pool by tokens. Every token's values are computed by the
//! same code whatever the split, so the results do not depend on the thread count.

/// Buffers holding one row per token, cut into the first `tokens` rows and the rest.
pub(crate) trait Split: Send + Sized {
    /// The first `tokens` rows, and the others.
    fn split(self, tokens: usize) -> (Self, Self);
}

/// A buffer of `width` values per token, written by the task that holds it.
pub(crate) struct Rows<'a, T> {
    pub data: &'a mut [T],
    pub width: usize,
}

impl<'a, T> Rows<'a, T> {
    pub fn new(data: &'a mut [T], width: usize) -> Self {
        Rows { data, width }
    }
}

impl<T: Send> Split for Rows<'_, T> {
    fn split(self, tokens: usize) -> (Self, Self) {
        let (a, b) = self
            .data
            .split_at_mut((tokens * self.width).min(self.data.len()));
        (Rows::new(a, self.width), Rows::new(b, self.width))
    }
}

/// A buffer of `width` values per token, read only.
#[derive(Clone, Copy)]
pub(crate) struct RowsRef<'a, T> {
    pub data: &'a [T],
    pub width: usize,
}

impl<'a, T> RowsRef<'a, T> {
    pub fn new(data: &'a [T], width: usize) -> Self {
        RowsRef { data, width }
    }
}

impl<T: Sync> Split for RowsRef<'_, T> {
    fn split(self, tokens: usize) -> (Self, Self) {
        let (a, b) = self
            .data
            .split_at((tokens * self.width).min(self.data.len()));
        (RowsRef::new(a, self.width), RowsRef::new(b, self.width))
    }
}

impl<S: Split> Split for Option<S> {
    fn split(self, tokens: usize) -> (Self, Self) {
        match self {
            Some(s) => {
                let (a, b) = s.split(tokens);
                (Some(a), Some(b))
            }
            None => (None, None),
        }
    }
}

macro_rules! split_tuple {
    ($($t:ident $v:ident $a:ident $b:ident),+) => {
        impl<$($t: Split),+> Split for ($($t,)+) {
            fn split(self, tokens: usize) -> (Self, Self) {
                let ($($v,)+) = self;
                $(let ($a, $b) = $v.split(tokens);)+
                (($($a,)+), ($($b,)+))
            }
        }
    };
}
split_tuple!(A a a0 a1, B b b0 b1);
split_tuple!(A a a0 a1, B b b0 b1, C c c0 c1);
split_tuple!(A a a0 a1, B b b0 b1, C c c0 c1, D d d0 d1);

/// How a pass's `n` tokens are split: tokens per task. Fewer than this many tokens per
/// task cost more in waking a thread than they save (decode is always one task).
const MIN_TOKENS_PER_TASK: usize = 8;

/// Tokens per task for `n` tokens on `pool`: about four tasks per thread, so a thread
/// that shares its core with another process does not hold the others up.
pub(crate) fn piece(pool: &rayon::ThreadPool, n: usize) -> usize {
    let threads = pool.current_num_threads().max(1);
    if threads == 1 {
        return n.max(1);
    }
    n.div_ceil(threads * 4).max(MIN_TOKENS_PER_TASK)
}

/// Runs `f(first token, rows)` over `rows` (`n` tokens) in tasks of about `piece` tokens,
/// on the pool when there is more than one; on this thread otherwise.
pub(crate) fn for_tokens<S: Split>(
    pool: &rayon::ThreadPool,
    n: usize,
    piece: usize,
    rows: S,
    f: &(impl Fn(usize, S) + Sync),
) {
    if n <= piece {
        f(0, rows);
    } else {
        pool.install(|| halves(0, n, piece, rows, f));
    }
}

fn halves<S: Split>(first: usize, n: usize, piece: usize, rows: S, f: &(impl Fn(usize, S) + Sync)) {
    if n <= piece {
        f(first, rows);
        return;
    }
    // Cut at a multiple of `piece`, so the tasks are the same whatever the recursion.
    let left = n.div_ceil(piece) / 2 * piece;
    let (a, b) = rows.split(left);
    rayon::join(
        || halves(first, left, piece, a, f),
        || halves(first + left, n - left, piece, b, f),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_visited_once_with_its_index() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        for n in [1usize, 7, 8, 9, 37, 128] {
            let src: Vec<u32> = (0..n as u32 * 3).collect();
            let mut dst = vec![0u32; n * 2];
            for_tokens(
                &pool,
                n,
                piece(&pool, n).min(3),
                (RowsRef::new(&src, 3), Rows::new(&mut dst, 2)),
                &|t0, (s, d): (RowsRef<u32>, Rows<u32>)| {
                    for (i, (s, d)) in s.data.chunks(3).zip(d.data.chunks_mut(2)).enumerate() {
                        d[0] = s[0] / 3;
                        d[1] = (t0 + i) as u32;
                    }
                },
            );
            let want: Vec<u32> = (0..n as u32).flat_map(|i| [i, i]).collect();
            assert_eq!(dst, want, "{n} tokens");
        }
    }
}
