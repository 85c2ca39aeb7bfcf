//! Distance kernels and vector encodings of the embedded index.
//!
//! Vectors are stored as rows of bytes in one of three encodings ([`Quantization`]):
//! - f32: the unit vector;
//! - f16: the unit vector in IEEE half precision;
//! - i8: the vector scaled so its largest component is ±127 (cosine ignores the scale, and
//!   using the whole range keeps far more precision than scaling the unit vector by 127).
//!
//! The distance is `1 - cos`: `1 - a·b` for unit f32 and f16 rows, the full cosine for i8 rows.
//! On x86-64 with AVX2, FMA and F16C the kernels take eight lanes at a time with two
//! accumulators; elsewhere plain loops that the compiler vectorizes where it may.

use super::vectors::Quantization;

/// A kernel: the distance between two rows of `dims` elements.
type Kernel = unsafe fn(*const u8, *const u8, usize) -> f32;

/// The distance between two rows of one encoding, with the kernel this CPU runs best.
#[derive(Clone, Copy)]
pub(crate) struct Metric {
    kernel: Kernel,
    dims: usize,
    bytes: usize,
}

impl Metric {
    pub(crate) fn new(q: Quantization, dims: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        let simd = avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = false;
        let kernel: Kernel = match (q, simd) {
            #[cfg(target_arch = "x86_64")]
            (Quantization::F32, true) => x86::ip_f32,
            #[cfg(target_arch = "x86_64")]
            (Quantization::F16, true) => x86::ip_f16,
            #[cfg(target_arch = "x86_64")]
            (Quantization::I8, true) => x86::cos_i8,
            (Quantization::F32, _) => plain::ip_f32,
            (Quantization::F16, _) => plain::ip_f16,
            (Quantization::I8, _) => plain::cos_i8,
        };
        Self {
            kernel,
            dims,
            bytes: row_bytes(q, dims),
        }
    }

    /// `1 - cos(a, b)` of two encoded rows.
    #[inline]
    pub(crate) fn distance(&self, a: &[u8], b: &[u8]) -> f32 {
        assert!(a.len() >= self.bytes && b.len() >= self.bytes);
        // SAFETY: both rows hold `dims` elements (checked above); the kernel was chosen for
        // this CPU's features.
        unsafe { (self.kernel)(a.as_ptr(), b.as_ptr(), self.dims) }
    }
}

/// The inner product of two f32 vectors (over the shorter one's length), on the fastest
/// kernel this CPU has: exact ground truth for the benchmarks.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let metric = Metric::new(Quantization::F32, n);
    // SAFETY: both slices hold at least `n` floats; the kernel was chosen for this CPU.
    1.0 - unsafe { (metric.kernel)(a.as_ptr().cast(), b.as_ptr().cast(), n) }
}

/// Bytes of one encoded row.
pub(crate) fn row_bytes(q: Quantization, dims: usize) -> usize {
    dims * match q {
        Quantization::F32 => 4,
        Quantization::F16 => 2,
        Quantization::I8 => 1,
    }
}

/// Writes `v` into `out` (of [`row_bytes`]) in encoding `q`.
pub(crate) fn encode(q: Quantization, v: &[f32], out: &mut [u8]) {
    match q {
        Quantization::F32 | Quantization::F16 => {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let scale = if n > 0.0 { 1.0 / n } else { 0.0 };
            if q == Quantization::F32 {
                for (x, o) in v.iter().zip(out.chunks_exact_mut(4)) {
                    o.copy_from_slice(&(x * scale).to_le_bytes());
                }
            } else {
                for (x, o) in v.iter().zip(out.chunks_exact_mut(2)) {
                    o.copy_from_slice(&half::f16::from_f32(x * scale).to_bits().to_le_bytes());
                }
            }
        }
        Quantization::I8 => {
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let scale = if max > 0.0 { 127.0 / max } else { 0.0 };
            for (x, o) in v.iter().zip(out.iter_mut()) {
                *o = ((x * scale).round().clamp(-127.0, 127.0) as i8).to_le_bytes()[0];
            }
        }
    }
}

/// Asks the CPU to start loading the first cache lines of `row`.
#[inline]
pub(crate) fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: prefetching is a hint; the addresses lie inside `row`.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().cast());
            if row.len() > 64 {
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(64).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The SIMD kernels run on this CPU.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

fn cosine(ab: f32, a2: f32, b2: f32) -> f32 {
    match (a2 == 0.0, b2 == 0.0) {
        (true, true) => 0.0,
        (true, false) | (false, true) => 1.0,
        (false, false) => 1.0 - ab / (a2.sqrt() * b2.sqrt()),
    }
}

/// Portable kernels.
mod plain {
    use super::cosine;

    /// # Safety
    /// `p` points at `n` f32.
    unsafe fn f32s(p: *const u8, n: usize) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| unsafe { p.add(i * 4).cast::<f32>().read_unaligned() })
    }

    /// # Safety
    /// `p` points at `n` f16.
    unsafe fn f16s(p: *const u8, n: usize) -> impl Iterator<Item = f32> {
        (0..n).map(move |i| unsafe {
            half::f16::from_bits(p.add(i * 2).cast::<u16>().read_unaligned()).to_f32()
        })
    }

    /// `1 - Σ aᵢbᵢ` with eight partial sums, so the loop vectorizes.
    fn ip(a: impl Iterator<Item = f32>, b: impl Iterator<Item = f32>) -> f32 {
        let mut acc = [0.0f32; 8];
        for (i, (x, y)) in a.zip(b).enumerate() {
            acc[i % 8] += x * y;
        }
        1.0 - acc.iter().sum::<f32>()
    }

    pub(super) unsafe fn ip_f32(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe { ip(f32s(a, n), f32s(b, n)) }
    }

    pub(super) unsafe fn ip_f16(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe { ip(f16s(a, n), f16s(b, n)) }
    }

    pub(super) unsafe fn cos_i8(a: *const u8, b: *const u8, n: usize) -> f32 {
        // SAFETY (callers): `a` and `b` point at `n` bytes each.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a.cast::<i8>(), n),
                std::slice::from_raw_parts(b.cast::<i8>(), n),
            )
        };
        let (mut ab, mut a2, mut b2) = (0i32, 0i32, 0i32);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (i32::from(x), i32::from(y));
            ab += x * y;
            a2 += x * x;
            b2 += y * y;
        }
        cosine(ab as f32, a2 as f32, b2 as f32)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::cosine;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Encodings the kernel widens to eight f32 lanes.
    trait Lanes {
        /// Bytes per element.
        const SIZE: usize;
        /// Eight elements at `p`, as f32.
        unsafe fn load(p: *const u8) -> __m256;
        /// One element at `p`, as f32.
        unsafe fn one(p: *const u8) -> f32;
    }

    struct F32;
    struct F16;

    impl Lanes for F32 {
        const SIZE: usize = 4;
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const u8) -> __m256 {
            unsafe { _mm256_loadu_ps(p.cast()) }
        }
        #[inline]
        unsafe fn one(p: *const u8) -> f32 {
            unsafe { p.cast::<f32>().read_unaligned() }
        }
    }

    impl Lanes for F16 {
        const SIZE: usize = 2;
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load(p: *const u8) -> __m256 {
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
        #[inline]
        unsafe fn one(p: *const u8) -> f32 {
            half::f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
        }
    }

    /// `1 - a·b`, sixteen elements a step.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn ip<T: Lanes>(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n {
                let (x0, y0) = (T::load(a.add(i * T::SIZE)), T::load(b.add(i * T::SIZE)));
                let (x1, y1) = (
                    T::load(a.add((i + 8) * T::SIZE)),
                    T::load(b.add((i + 8) * T::SIZE)),
                );
                s0 = _mm256_fmadd_ps(x0, y0, s0);
                s1 = _mm256_fmadd_ps(x1, y1, s1);
                i += 16;
            }
            if i + 8 <= n {
                let (x, y) = (T::load(a.add(i * T::SIZE)), T::load(b.add(i * T::SIZE)));
                s0 = _mm256_fmadd_ps(x, y, s0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(s0, s1));
            while i < n {
                s += T::one(a.add(i * T::SIZE)) * T::one(b.add(i * T::SIZE));
                i += 1;
            }
            1.0 - s
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn ip_f32(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe { ip::<F32>(a, b, n) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn ip_f16(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe { ip::<F16>(a, b, n) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn cos_i8(a: *const u8, b: *const u8, n: usize) -> f32 {
        unsafe {
            let mut ab = _mm256_setzero_si256();
            let mut a2 = _mm256_setzero_si256();
            let mut b2 = _mm256_setzero_si256();
            let mut i = 0;
            // Sixteen elements widened to i16, multiplied and summed in pairs into i32 lanes:
            // a pair is at most 2 × 127², so lanes cannot overflow below millions of dimensions.
            while i + 16 <= n {
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.add(i).cast()));
                let y = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(i).cast()));
                ab = _mm256_add_epi32(ab, _mm256_madd_epi16(x, y));
                a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(x, x));
                b2 = _mm256_add_epi32(b2, _mm256_madd_epi16(y, y));
                i += 16;
            }
            let lanes = |v: __m256i| -> i64 {
                let mut out = [0i32; 8];
                _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
                out.iter().map(|&x| i64::from(x)).sum()
            };
            let (mut sab, mut sa2, mut sb2) = (lanes(ab), lanes(a2), lanes(b2));
            while i < n {
                let x = i64::from(a.add(i).cast::<i8>().read());
                let y = i64::from(b.add(i).cast::<i8>().read());
                sab += x * y;
                sa2 += x * x;
                sb2 += y * y;
                i += 1;
            }
            cosine(sab as f32, sa2 as f32, sb2 as f32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::quality::Rng(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        let ab: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let a2: f32 = a.iter().map(|x| x * x).sum();
        let b2: f32 = b.iter().map(|x| x * x).sum();
        cosine(ab, a2, b2)
    }

    fn row(q: Quantization, v: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; row_bytes(q, v.len())];
        encode(q, v, &mut out);
        out
    }

    #[test]
    fn every_kernel_agrees_with_the_exact_cosine_at_every_length() {
        for n in [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 384, 385, 768, 1536] {
            let (a, b) = (vectors(n, n as u64), vectors(n, 1000 + n as u64));
            let want = cos(&a, &b);
            for (q, tolerance) in [
                (Quantization::F32, 1e-4),
                (Quantization::F16, 2e-3),
                (Quantization::I8, 3e-2),
            ] {
                let (ra, rb) = (row(q, &a), row(q, &b));
                let got = Metric::new(q, n).distance(&ra, &rb);
                assert!(
                    (got - want).abs() < tolerance,
                    "{q:?} n={n}: {got} vs {want}"
                );
                let plain = match q {
                    Quantization::F32 => plain::ip_f32,
                    Quantization::F16 => plain::ip_f16,
                    Quantization::I8 => plain::cos_i8,
                };
                // SAFETY: both rows hold `n` elements.
                let p = unsafe { plain(ra.as_ptr(), rb.as_ptr(), n) };
                assert!((got - p).abs() < 1e-3, "{q:?} n={n}: simd {got}, plain {p}");
            }
        }
    }

    #[test]
    fn zero_and_identical_vectors_have_the_expected_distances() {
        let z = vec![0.0f32; 16];
        let o = vectors(16, 1);
        for q in [Quantization::F32, Quantization::F16, Quantization::I8] {
            let m = Metric::new(q, 16);
            let (rz, ro) = (row(q, &z), row(q, &o));
            assert!((m.distance(&ro, &ro)).abs() < 2e-3, "{q:?}");
            assert!((m.distance(&rz, &ro) - 1.0).abs() < 1e-6, "{q:?}");
        }
    }

    #[test]
    #[should_panic]
    fn a_short_row_is_refused_not_read_past() {
        let m = Metric::new(Quantization::F32, 16);
        m.distance(&[0u8; 64], &[0u8; 60]);
    }
}
