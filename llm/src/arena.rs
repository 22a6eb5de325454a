//! Where the weights live. Decode reads every weight once per token, so the TLB misses on
//! each new 4 KB page: weights in 2 MB pages decode faster (Gemma 3 270M, one thread: 50.8
//! → 55.5 tok/s from its embeddings alone). Large buffers ask for huge pages where they
//! are read ([`huge_pages`]); the many small matrices of the layers are each a separate
//! allocation too small to hold an aligned 2 MB page, so once loaded they are copied into
//! one 2 MB-aligned [`Arena`] that does ([`Packer`]).

use std::alloc::Layout;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

const HUGE: usize = 2 << 20;
/// Buffers this large keep their own allocation: they hold huge pages themselves, and
/// copying them would hold them twice at once (Gemma 3's 178 MB embeddings).
const OWN_ABOVE: usize = 8 << 20;
/// Each buffer starts on a cache line.
const ALIGN: usize = 64;

/// Asks Linux to back a buffer's not yet touched pages with 2 MB pages where it has them
/// to spare (`transparent_hugepage` = `madvise`, the usual default, gives them only to
/// memory that asks). Only the 2 MB-aligned part of the buffer can have them.
pub(crate) fn huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the caller's allocation holds the range, and MADV_HUGEPAGE changes
            // only how its pages are backed, never their contents.
            let rc = unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE)
            };
            if rc != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "madvise(MADV_HUGEPAGE) refused");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Plain values a [`Buf`] may hold: any bit pattern is one, so bytes copied in are valid.
pub trait Pod: Copy + Send + Sync + 'static + sealed::Sealed {}
impl Pod for u8 {}
impl Pod for i8 {}
impl Pod for f32 {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
    impl Sealed for f32 {}
}

/// One 2 MB-aligned allocation holding many weight buffers, read-only once filled.
pub struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the memory is written only while the arena is being filled, before it is shared;
// after that it is only read.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `Packer::into_placing` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} bytes)", self.layout.size())
    }
}

/// A weight buffer: its own vector, or a stretch of an [`Arena`] (placed there only by a
/// [`Packer`], so every stretch is in bounds and aligned).
#[derive(Debug, Clone)]
pub struct Buf<T: Pod>(Held<T>);

#[derive(Debug, Clone)]
enum Held<T: Pod> {
    Own(Vec<T>),
    Packed {
        /// Kept alive by every buffer in it.
        arena: Arc<Arena>,
        /// Bytes from the arena's start (a multiple of [`ALIGN`]).
        offset: usize,
        len: usize,
        _t: PhantomData<T>,
    },
}

impl<T: Pod> Default for Buf<T> {
    fn default() -> Self {
        Buf(Held::Own(Vec::new()))
    }
}

impl<T: Pod> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf(Held::Own(v))
    }
}

impl<T: Pod> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.0 {
            Held::Own(v) => v,
            Held::Packed {
                arena, offset, len, ..
            } => {
                // SAFETY: `Packer` placed `len` values of T at `offset` (aligned for T, as
                // the arena is) inside the arena, which this Buf keeps alive, and nothing
                // writes them after.
                unsafe {
                    std::slice::from_raw_parts(arena.ptr.as_ptr().add(*offset).cast::<T>(), *len)
                }
            }
        }
    }
}

impl<T: Pod> Buf<T> {
    /// Appends, turning a packed buffer back into its own vector first.
    pub fn extend_from_slice(&mut self, more: &[T]) {
        match &mut self.0 {
            Held::Own(v) => v.extend_from_slice(more),
            Held::Packed { .. } => {
                let mut v = self.to_vec();
                v.extend_from_slice(more);
                self.0 = Held::Own(v);
            }
        }
    }

    /// Whether it lives in an arena.
    pub fn is_packed(&self) -> bool {
        matches!(self.0, Held::Packed { .. })
    }
}

/// Copies weight buffers into one [`Arena`]: a first walk over them measures
/// ([`Packer::measure`]), the second, in the same order, places
/// ([`Packer::into_placing`]). Buffers over [`OWN_ABOVE`] are left where they are.
#[derive(Debug, Default)]
pub struct Packer {
    arena: Option<Arc<Arena>>,
    offset: usize,
    packed: usize,
    trimmed: usize,
}

impl Packer {
    /// A packer that only adds up the room the buffers it visits need.
    pub fn measure() -> Packer {
        Packer::default()
    }

    /// The arena for what was measured, in huge pages where the system has them; `None`
    /// when there is nothing to pack or no memory for it (the buffers then stay as they are).
    pub fn into_placing(self) -> Option<Packer> {
        if self.offset == 0 {
            return None;
        }
        let layout = Layout::from_size_align(self.offset.next_multiple_of(HUGE), HUGE).ok()?;
        // Not zeroed: that would touch every page at once (std zeroes over-aligned memory
        // by hand), doubling the load's peak; only bytes copied in are ever read.
        // SAFETY: the layout's size is not zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        huge_pages(ptr.as_ptr(), layout.size());
        Some(Packer {
            arena: Some(Arc::new(Arena { ptr, layout })),
            offset: 0,
            packed: 0,
            trimmed: 0,
        })
    }

    /// Measures or places one buffer.
    pub fn visit<T: Pod>(&mut self, b: &mut Buf<T>) {
        let Held::Own(v) = &b.0 else { return };
        let bytes = std::mem::size_of_val(v.as_slice());
        if bytes == 0 || bytes > OWN_ABOVE {
            return;
        }
        let offset = self.offset.next_multiple_of(ALIGN);
        self.offset = offset + bytes;
        let Some(arena) = &self.arena else { return };
        if self.offset > arena.layout.size() {
            debug_assert!(
                false,
                "the placing walk visited more than the measuring one"
            );
            return;
        }
        // SAFETY: the target range lies inside the arena (checked above), which nothing
        // else reads or writes until placing ends; the source is a different allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v.as_ptr().cast::<u8>(),
                arena.ptr.as_ptr().add(offset),
                bytes,
            )
        };
        let len = v.len();
        b.0 = Held::Packed {
            arena: arena.clone(),
            offset,
            len,
            _t: PhantomData,
        };
        self.packed += bytes;
        // Copies freed from glibc's heap (not their own mappings) stay resident until
        // trimmed; trimming as the packing goes keeps them from adding up at load.
        if self.packed - self.trimmed >= TRIM_EVERY {
            self.trimmed = self.packed;
            trim();
        }
    }

    /// Bytes placed in the arena so far.
    pub fn packed(&self) -> usize {
        self.packed
    }

    /// Ends placing: gives the memory of the copies back to the system.
    pub fn finish(self) -> usize {
        trim();
        self.packed
    }
}

/// Bytes packed between trims.
const TRIM_EVERY: usize = 8 << 20;

/// Returns the free pages of glibc's heap to the system.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_buffers_read_back_what_they_held() {
        let mut a: Buf<i8> = (0..200)
            .map(|i| (i % 100) as i8 - 50)
            .collect::<Vec<_>>()
            .into();
        let mut b: Buf<f32> = vec![1.5f32, -2.25, 3.0].into();
        let mut c: Buf<u8> = Vec::new().into();
        let mut big: Buf<u8> = vec![7u8; OWN_ABOVE + 1].into();
        let (wa, wb) = (a.to_vec(), b.to_vec());
        let walk = |p: &mut Packer,
                    a: &mut Buf<i8>,
                    b: &mut Buf<f32>,
                    c: &mut Buf<u8>,
                    big: &mut Buf<u8>| {
            p.visit(a);
            p.visit(b);
            p.visit(c);
            p.visit(big);
        };
        let mut p = Packer::measure();
        walk(&mut p, &mut a, &mut b, &mut c, &mut big);
        let mut p = p.into_placing().expect("arena");
        walk(&mut p, &mut a, &mut b, &mut c, &mut big);
        assert_eq!(p.packed(), 200 + 12);
        assert!(a.is_packed() && b.is_packed());
        assert!(!big.is_packed() && !c.is_packed());
        assert_eq!((&a[..], &b[..]), (&wa[..], &wb[..]));
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        drop(p);
        let copy = a.clone();
        drop(a);
        assert_eq!(&copy[..], &wa[..]);
        b.extend_from_slice(&[4.0]);
        assert_eq!(&b[..], &[1.5, -2.25, 3.0, 4.0]);
    }
}
