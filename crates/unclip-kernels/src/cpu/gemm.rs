//! A bounds-checked, safe face for the `gemm` crate's strided matrix multiply.
//!
//! Every kernel here describes its operands as strided views into plain `f32` slices (a
//! shifted window of a padded image, a transposed weight) instead of copying them into
//! contiguous matrices; the view constructors check that the whole view lies inside its slice,
//! so the one `unsafe` call below only ever reads and writes in bounds.

/// A read-only `rows × cols` view: element `(i, j)` is `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Index one past the last element a strided view touches.
fn extent(offset: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        offset
    } else {
        offset + (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a> View<'a> {
    /// # Panics
    /// When the view does not fit inside `data` (a kernel bug).
    pub fn new(
        data: &'a [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [rs, cs]: [usize; 2],
    ) -> Self {
        assert!(
            extent(offset, rows, cols, rs, cs) <= data.len(),
            "matrix view {rows}x{cols} (strides {rs}, {cs}, offset {offset}) outside a slice of {}",
            data.len()
        );
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A contiguous row-major matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, [rows, cols], [cols, 1])
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// A writable `rows × cols` view (as [`View`]). Rows and columns must not alias each other
/// (`rs ≥ cols·cs` or `cs ≥ rows·rs`), which the kernels' layouts guarantee.
pub(crate) struct ViewMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> ViewMut<'a> {
    /// # Panics
    /// When the view does not fit inside `data`, or its rows overlap.
    pub fn new(
        data: &'a mut [f32],
        offset: usize,
        [rows, cols]: [usize; 2],
        [rs, cs]: [usize; 2],
    ) -> Self {
        assert!(
            extent(offset, rows, cols, rs, cs) <= data.len(),
            "matrix view {rows}x{cols} (strides {rs}, {cs}, offset {offset}) outside a slice of {}",
            data.len()
        );
        assert!(
            rows <= 1 || cols <= 1 || rs >= cols * cs || cs >= rows * rs,
            "overlapping output view {rows}x{cols} (strides {rs}, {cs})"
        );
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A contiguous row-major matrix at the start of `data`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, [rows, cols], [cols, 1])
    }
}

/// Threads for one product: all of rayon's pool for large products, one thread for small
/// ones (where splitting costs more than it saves) and inside parallel loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    One,
    Pool,
}

/// Below this many multiply-adds a product runs on one thread even when asked for the pool.
const MIN_PARALLEL_MACS: usize = 1 << 18;

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` with `accumulate`.
///
/// # Panics
/// When the shapes do not chain (`lhs` m×k, `rhs` k×n, `dst` m×n).
pub(crate) fn gemm(
    dst: ViewMut<'_>,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    scale: f32,
    threads: Threads,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: inner dimensions");
    assert_eq!((dst.rows, dst.cols), (m, n), "gemm: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[dst.offset + i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::Pool if m * n * k >= MIN_PARALLEL_MACS && rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    let stride = |s: usize| s as isize;
    // SAFETY: the three views were bounds-checked at construction (every element they address
    // lies inside its slice), `dst` is borrowed mutably and its rows do not overlap, and `lhs`
    // and `rhs` are shared borrows, so no element is written while another reference reads it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr().add(dst.offset),
            stride(dst.cs),
            stride(dst.rs),
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            stride(lhs.cs),
            stride(lhs.rs),
            rhs.data.as_ptr().add(rhs.offset),
            stride(rhs.cs),
            stride(rhs.rs),
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn strided_views_multiply_like_the_textbook() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        gemm(
            ViewMut::rows(&mut c, m, n),
            false,
            View::rows(&a, m, k),
            View::rows(&b, k, n),
            1.0,
            Threads::Pool,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // Transposed operands stored transposed give the same product; accumulate with a scale.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        gemm(
            ViewMut::rows(&mut c, m, n),
            true,
            View::rows(&at, k, m).t(),
            View::rows(&bt, n, k).t(),
            -2.0,
            Threads::One,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x + y).abs() < 1e-5, "{x} vs {}", -y);
        }
    }

    #[test]
    #[should_panic(expected = "outside a slice")]
    fn views_past_the_end_are_refused() {
        let a = vec![0.0; 10];
        let _ = View::new(&a, 2, [3, 3], [3, 1]);
    }
}
