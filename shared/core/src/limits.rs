//! The ceilings a deployment puts on run requests: the stack's settings bound what one
//! request may ask for (issue 30), from both sides where both matter.

use crate::error::{Error, Result};
use crate::manifest::{RunOptions, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS};

/// The ceilings a deployment puts on run requests (the stack's settings; the CLI's own for
/// local runs). A request outside them is refused before anything is written, with a message
/// naming the field and the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    /// Key prefixes (each ending in `/`) that a request's `input_prefix` must lie under;
    /// empty: anywhere (the pipeline's own prefixes stay refused).
    pub input_prefixes: Vec<String>,
    /// Smallest `shard_size`.
    pub min_shard_size: usize,
    /// Largest `shard_size`.
    pub max_shard_size: usize,
    /// Most shards one run may have (the cap on `shard_count`, and on the listing divided
    /// by the shard size).
    pub max_shards_per_run: usize,
    /// Largest `k`.
    pub max_pca_k: usize,
    /// Largest `max_pixels` (the decompression-bomb guard may be lowered, not raised).
    pub max_pixels: u64,
    /// Largest `max_image_bytes`.
    pub max_image_bytes: u64,
    /// The bounds are the stack's: messages name its parameters.
    pub from_stack: bool,
}

/// The stack's default `MIN_SHARD_SIZE`.
pub const DEFAULT_MIN_SHARD_SIZE: usize = 16;
/// The stack's default `MAX_SHARD_SIZE`.
pub const DEFAULT_MAX_SHARD_SIZE: usize = 16_384;
/// The stack's default `MAX_SHARDS_PER_RUN`.
pub const DEFAULT_MAX_SHARDS_PER_RUN: usize = 10_000;
/// The stack's default `MAX_PCA_K`.
pub const DEFAULT_MAX_PCA_K: usize = 1280;
/// The largest pixel limit a local run may ask for: 250 Mpx decode to ~750 MB of RGB.
pub const LOCAL_MAX_PIXELS: u64 = 250_000_000;
/// The largest image-size limit a local run may ask for: 1 GiB.
pub const LOCAL_MAX_IMAGE_BYTES: u64 = 1 << 30;

impl RequestLimits {
    /// The stack's defaults (the template's parameters' defaults).
    pub fn stack_defaults() -> Self {
        Self {
            input_prefixes: Vec::new(),
            min_shard_size: DEFAULT_MIN_SHARD_SIZE,
            max_shard_size: DEFAULT_MAX_SHARD_SIZE,
            max_shards_per_run: DEFAULT_MAX_SHARDS_PER_RUN,
            max_pca_k: DEFAULT_MAX_PCA_K,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            from_stack: true,
        }
    }

    /// The bounds of local runs (and of a splitter built without [`RequestLimits`]): the
    /// user's own machine, so wider — any shard size, up to a million shards, and the
    /// pixel and byte limits at what one image may take in memory.
    pub fn local() -> Self {
        Self {
            input_prefixes: Vec::new(),
            min_shard_size: 1,
            max_shard_size: 1_000_000,
            max_shards_per_run: 1_000_000,
            max_pca_k: usize::MAX,
            max_pixels: LOCAL_MAX_PIXELS,
            max_image_bytes: LOCAL_MAX_IMAGE_BYTES,
            from_stack: false,
        }
    }

    /// Where a bound is set, for messages.
    fn origin(&self, parameter: &str) -> String {
        if self.from_stack {
            format!("(the stack's {parameter})")
        } else {
            "(local runs)".to_string()
        }
    }

    /// Checks the options a request asks for (on top of the defaults) against the ceilings.
    pub fn check_options(&self, o: &RunOptions) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if o.shard_count.is_none() && o.shard_size < self.min_shard_size {
            return bad(format!(
                "shard_size = {} is below the minimum {} {}",
                o.shard_size,
                self.min_shard_size,
                self.origin("MinShardSize")
            ));
        }
        if o.shard_count.is_none() && o.shard_size > self.max_shard_size {
            return bad(format!(
                "shard_size = {} is above the maximum {} {}",
                o.shard_size,
                self.max_shard_size,
                self.origin("MaxShardSize")
            ));
        }
        if let Some(count) = o.shard_count {
            if count > self.max_shards_per_run {
                return bad(format!(
                    "shard_count = {count} is above the maximum {} shards per run {}",
                    self.max_shards_per_run,
                    self.origin("MaxShardsPerRun")
                ));
            }
        }
        if o.pca.variance.is_none() && o.pca.k > self.max_pca_k {
            return bad(format!(
                "k = {} is above the maximum {} {}",
                o.pca.k,
                self.max_pca_k,
                self.origin("MaxPcaK")
            ));
        }
        if o.max_pixels > self.max_pixels {
            return bad(format!(
                "max_pixels = {} is above the maximum {} {}: the decompression-bomb guard may \
                 be lowered, not raised",
                o.max_pixels,
                self.max_pixels,
                self.origin("MaxPixels")
            ));
        }
        if o.max_image_bytes > self.max_image_bytes {
            return bad(format!(
                "max_image_bytes = {} is above the maximum {} {}",
                o.max_image_bytes,
                self.max_image_bytes,
                self.origin("MaxImageBytes")
            ));
        }
        Ok(())
    }

    /// Checks a normalized input prefix against [`Self::input_prefixes`].
    pub fn check_prefix(&self, prefix: &str) -> Result<()> {
        if self.input_prefixes.is_empty()
            || self
                .input_prefixes
                .iter()
                .any(|allowed| prefix.starts_with(allowed.as_str()))
        {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "input_prefix {prefix:?} is not under one of the allowed input prefixes {:?} {}",
            self.input_prefixes,
            self.origin("InputPrefixes")
        )))
    }

    /// Checks the number of shards `images` listed images make with `options`: above
    /// [`Self::max_shards_per_run`] the request is refused (never silently re-cut: the
    /// shard size is part of the run id), naming the smallest shard size that fits.
    /// With `shard_count`, the size it makes (`images / count`, rounded up) must also lie
    /// within [`Self::min_shard_size`] ..= [`Self::max_shard_size`] (a shard too large for
    /// the featurizer's timeout is as bad as one asked for by size).
    pub fn check_shards(&self, images: usize, options: &RunOptions) -> Result<()> {
        let size = match options.shard_count {
            Some(count) => images.div_ceil(count.max(1)),
            None => options.shard_size.max(1),
        };
        if let Some(count) = options.shard_count {
            self.check_counted_size(images, count, size)?;
        }
        let shards = images.div_ceil(size.max(1));
        if shards <= self.max_shards_per_run {
            return Ok(());
        }
        let needed = images.div_ceil(self.max_shards_per_run.max(1));
        let remedy = if needed <= self.max_shard_size {
            format!("ask for shard_size >= {needed}, or narrow input_prefix")
        } else {
            "narrow input_prefix (split the images into several runs)".to_string()
        };
        Err(Error::InvalidRequest(format!(
            "{images} images in shards of {size} make {shards} shards, above the maximum {} \
             shards per run {}: {remedy}",
            self.max_shards_per_run,
            self.origin("MaxShardsPerRun")
        )))
    }

    /// The shard size `shard_count` makes over `images` images, checked against the bounds.
    fn check_counted_size(&self, images: usize, count: usize, size: usize) -> Result<()> {
        if size > self.max_shard_size {
            return Err(Error::InvalidRequest(format!(
                "shard_count = {count} makes shards of {size} of the {images} images, above the \
                 maximum shard size {} {}: ask for shard_count >= {}",
                self.max_shard_size,
                self.origin("MaxShardSize"),
                images.div_ceil(self.max_shard_size.max(1))
            )));
        }
        // The last shard may be smaller; the sizes asked for are what the bound is about.
        if images >= count && size < self.min_shard_size {
            return Err(Error::InvalidRequest(format!(
                "shard_count = {count} makes shards of {size} of the {images} images, below the \
                 minimum shard size {} {}: ask for shard_count <= {}",
                self.min_shard_size,
                self.origin("MinShardSize"),
                (images / self.min_shard_size.max(1)).max(1)
            )));
        }
        Ok(())
    }

    /// A `variance` share keeps as many components as it takes, up to `min(n - 1, dim)`:
    /// when that may exceed [`Self::max_pca_k`], the request is refused (the `k` ceiling
    /// would not hold), naming `variance` and the bound.
    pub fn check_components(
        &self,
        images: usize,
        feature_dim: usize,
        options: &RunOptions,
    ) -> Result<()> {
        let Some(variance) = options.pca.variance else {
            return Ok(());
        };
        let most = images.saturating_sub(1).min(feature_dim);
        if most <= self.max_pca_k {
            return Ok(());
        }
        Err(Error::InvalidRequest(format!(
            "variance = {variance} may keep up to {most} components, above the maximum {} {}: \
             ask for k <= {} instead",
            self.max_pca_k,
            self.origin("MaxPcaK"),
            self.max_pca_k
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::pca::PcaOptions;

    /// Options each above one ceiling of the stack's defaults, with the message it gets.
    fn above_a_ceiling(o: &RunOptions) -> Vec<(RunOptions, &'static str)> {
        vec![
            (
                RunOptions {
                    shard_size: 1,
                    ..o.clone()
                },
                "shard_size = 1 is below the minimum 16 (the stack's MinShardSize)",
            ),
            (
                RunOptions {
                    shard_size: 20_000,
                    ..o.clone()
                },
                "shard_size = 20000 is above the maximum 16384",
            ),
            (
                RunOptions {
                    shard_count: Some(10_001),
                    ..o.clone()
                },
                "shard_count = 10001 is above the maximum 10000",
            ),
            (
                RunOptions {
                    pca: PcaOptions {
                        k: 1281,
                        ..o.pca.clone()
                    },
                    ..o.clone()
                },
                "k = 1281 is above the maximum 1280",
            ),
            (
                RunOptions {
                    max_pixels: 1_000_000_000_000,
                    ..o.clone()
                },
                "max_pixels = 1000000000000 is above the maximum 50000000",
            ),
            (
                RunOptions {
                    max_image_bytes: 1 << 40,
                    ..o.clone()
                },
                "max_image_bytes = 1099511627776 is above the maximum 67108864",
            ),
        ]
    }

    #[test]
    fn requests_above_a_ceiling_are_refused_naming_the_field_and_the_bound() {
        let limits = RequestLimits {
            input_prefixes: vec!["images/".into()],
            ..RequestLimits::stack_defaults()
        };
        let o = RunOptions::default();
        assert!(limits.check_options(&o).is_ok());
        let cases = above_a_ceiling(&o);
        for (options, expected) in cases {
            let msg = limits.check_options(&options).unwrap_err().to_string();
            assert!(msg.contains(expected), "{msg}");
        }
        // A shard count within the cap may make shards below the minimum size.
        assert!(limits
            .check_options(&RunOptions {
                shard_count: Some(100),
                shard_size: 1,
                ..o.clone()
            })
            .is_ok());
        assert!(limits.check_prefix("images/cats/").is_ok());
        for outside in ["", "imagesX/", "other/"] {
            let msg = limits.check_prefix(outside).unwrap_err().to_string();
            assert!(
                msg.contains("input_prefix") && msg.contains("\"images/\""),
                "{msg}"
            );
        }
        assert!(
            RequestLimits::stack_defaults().check_prefix("").is_ok(),
            "default: anywhere"
        );
        // The cap on shards, with the shard size that would fit.
        let msg = limits
            .check_shards(
                200_000,
                &RunOptions {
                    shard_size: 16,
                    ..o.clone()
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("12500 shards, above the maximum 10000"),
            "{msg}"
        );
        assert!(msg.contains("shard_size >= 20"), "{msg}");
        assert!(limits
            .check_shards(
                160_000,
                &RunOptions {
                    shard_size: 16,
                    ..o.clone()
                }
            )
            .is_ok());
        let msg = limits
            .check_shards(usize::MAX / 2, &o)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("narrow input_prefix"), "{msg}");
        let local = RequestLimits::local();
        assert!(local
            .check_options(&RunOptions {
                shard_size: 1,
                ..o.clone()
            })
            .is_ok());
        let msg = local
            .check_options(&RunOptions {
                max_pixels: 1_000_000_000_000,
                ..o
            })
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(local runs)"), "{msg}");
    }
}
