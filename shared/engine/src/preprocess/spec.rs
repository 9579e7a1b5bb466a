//! What a model's input needs, from decoded RGB8 to its tensor: the resize (filter, mode,
//! size), the centre crop, the normalization (`scale`, `offset`, per-channel `mean` and
//! `std`), the channel order and the layout. [`Preprocessing`] is the declarative part (the
//! fields of `model_spec.json`), [`Preprocessor`] the checked, ready-to-run form.

use serde::{Deserialize, Serialize};

use super::geometry::{center_crop, resize_nearest, shorter_side_size};
use super::resample::{resize_rgb8, Filter};
use super::{ImageErrorKind, PreprocessError, Rgb8};

/// Tensor layout of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, height, width, channels (Keras, TensorFlow).
    NHWC,
    /// Batch, channels, height, width (PyTorch).
    NCHW,
}

/// The resize filter, each exact to Pillow 13's `Image.resize` with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// `Image.NEAREST` (pixel-centre sampling, no convolution).
    Nearest,
    /// `Image.BILINEAR` (triangle filter, stretched when shrinking).
    Bilinear,
    /// `Image.BICUBIC` (Catmull-Rom, stretched when shrinking).
    Bicubic,
    /// `Image.LANCZOS` (Lanczos-3, stretched when shrinking).
    Lanczos,
}

/// How the resize chooses its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// To a fixed size, ignoring the aspect ratio: `height` x `width`, or `resize_size`
    /// square when a `crop` follows.
    #[default]
    Stretch,
    /// The shorter side to `resize_size`, keeping the aspect ratio (torchvision's
    /// `Resize(int)` on a PIL image); a `crop` must follow.
    ShorterSide,
}

/// Order of the channels in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ChannelOrder {
    /// Red, green, blue (most models).
    #[default]
    RGB,
    /// Blue, green, red (Caffe and OpenCV-trained models).
    BGR,
}

/// The preprocessing of a model spec (see `docs/model.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// The model's input height.
    pub height: u32,
    /// The model's input width.
    pub width: u32,
    /// Resize filter.
    pub resize: ResizeFilter,
    /// How the resize sizes the image.
    pub resize_mode: ResizeMode,
    /// The shorter side (`shorter_side`), or the square side (`stretch` with a crop).
    pub resize_size: Option<u32>,
    /// Centre crop `[height, width]` after the resize.
    pub crop: Option<[u32; 2]>,
    /// `pixel * scale + offset` ...
    pub scale: f32,
    /// ... (see `scale`).
    pub offset: f32,
    /// ... then minus `mean[c]` (one per tensor channel, in `channel_order`) ...
    pub mean: Option<Vec<f32>>,
    /// ... divided by `std[c]`.
    pub std: Option<Vec<f32>>,
    /// Channel order of the tensor.
    pub channel_order: ChannelOrder,
    /// Layout of the tensor.
    pub layout: Layout,
}

impl Preprocessing {
    /// Checks the fields against one another; the message names the field at fault.
    pub fn check(&self) -> Result<(), String> {
        if self.width == 0 || self.height == 0 {
            return Err("width and height must be positive".into());
        }
        if !self.scale.is_finite() || !self.offset.is_finite() {
            return Err("scale and offset must be finite numbers".into());
        }
        for (name, values) in [("mean", &self.mean), ("std", &self.std)] {
            if let Some(values) = values {
                if values.len() != 3 {
                    return Err(format!(
                        "{name} has {} values: give one per channel (3)",
                        values.len()
                    ));
                }
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(format!("{name} must be finite numbers"));
                }
            }
        }
        if self.std.iter().flatten().any(|&s| s == 0.0) {
            return Err("std must not be 0".into());
        }
        if let Some([h, w]) = self.crop {
            if [h, w] != [self.height, self.width] {
                return Err(format!(
                    "crop [{h}, {w}] is not the model input's [height, width] = [{}, {}]",
                    self.height, self.width
                ));
            }
        }
        match (self.resize_mode, self.resize_size, self.crop) {
            (_, Some(0), _) => Err("resize_size must be positive".into()),
            (ResizeMode::ShorterSide, None, _) => {
                Err("resize_mode \"shorter_side\" needs resize_size (the shorter side)".into())
            }
            (ResizeMode::ShorterSide, Some(_), None) => Err(
                "resize_mode \"shorter_side\" keeps the aspect ratio, so the input size varies: \
                 add a crop [height, width]"
                    .into(),
            ),
            (ResizeMode::Stretch, Some(s), None) => Err(format!(
                "resize_size {s} without a crop: a stretch goes to height x width (drop \
                 resize_size), or add a crop after a {s}x{s} stretch"
            )),
            _ => Ok(()),
        }
    }

    /// The size the resize produces for an image of `width` x `height`, `(width, height)`.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match (self.resize_mode, self.resize_size) {
            (ResizeMode::ShorterSide, Some(s)) => shorter_side_size(width, height, s),
            (ResizeMode::Stretch, Some(s)) => (s, s),
            _ => (self.width, self.height),
        }
    }
}

/// A checked [`Preprocessing`], ready to run: the normalization is a lookup table per
/// channel (each entry computed as `((p * scale + offset) - mean[c]) / std[c]` in `f32`,
/// the reference's operations, so the table changes no bit).
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: Preprocessing,
    /// `table[c][p]`: the value of tensor channel `c` for byte `p` of its source channel.
    table: Box<[[f32; 256]; 3]>,
    /// The RGB channel tensor channel `c` reads.
    source: [usize; 3],
}

impl Preprocessor {
    /// Checks `spec` and builds the tables.
    pub fn new(spec: Preprocessing) -> Result<Self, String> {
        spec.check()?;
        let mut table = Box::new([[0f32; 256]; 3]);
        for (c, row) in table.iter_mut().enumerate() {
            let mean = spec.mean.as_ref().map_or(0.0, |m| m[c]);
            let std = spec.std.as_ref().map_or(1.0, |s| s[c]);
            for (p, value) in row.iter_mut().enumerate() {
                let x = f32::from(p as u8) * spec.scale + spec.offset;
                // x - 0 and x / 1 are exact: without mean and std this is `x`.
                *value = (x - mean) / std;
            }
        }
        let source = match spec.channel_order {
            ChannelOrder::RGB => [0, 1, 2],
            ChannelOrder::BGR => [2, 1, 0],
        };
        Ok(Self {
            spec,
            table,
            source,
        })
    }

    /// The preprocessing it runs.
    pub fn spec(&self) -> &Preprocessing {
        &self.spec
    }

    /// Number of floats of one input tensor.
    pub fn input_len(&self) -> usize {
        self.spec.width as usize * self.spec.height as usize * 3
    }

    /// The model's input image, before normalization: resized and cropped, `width` x
    /// `height` RGB8 (what Pillow gives the reference).
    pub fn pixels(&self, image: &Rgb8) -> Result<Rgb8, PreprocessError> {
        let (rw, rh) = self.spec.resized_size(image.width, image.height);
        let resized = resize(self.spec.resize, image, rw, rh)?;
        let Some([ch, cw]) = self.spec.crop else {
            return Ok(resized);
        };
        if (rw, rh) == (cw, ch) {
            return Ok(resized);
        }
        Ok(Rgb8 {
            width: cw,
            height: ch,
            pixels: center_crop(&resized.pixels, (rw, rh), (cw, ch)),
        })
    }

    /// Writes the tensor of `pixels` (the output of [`Preprocessor::pixels`]) into `out`
    /// (`input_len()` floats) in the spec's channel order and layout.
    pub fn tensor_into(&self, pixels: &Rgb8, out: &mut [f32]) {
        assert_eq!(
            pixels.pixels.len(),
            self.input_len(),
            "pixels of the input size"
        );
        assert_eq!(out.len(), self.input_len(), "a tensor of the input size");
        let [s0, s1, s2] = self.source;
        let [t0, t1, t2] = &*self.table;
        match self.spec.layout {
            Layout::NHWC => {
                for (o, p) in out.chunks_exact_mut(3).zip(pixels.pixels.chunks_exact(3)) {
                    o[0] = t0[usize::from(p[s0])];
                    o[1] = t1[usize::from(p[s1])];
                    o[2] = t2[usize::from(p[s2])];
                }
            }
            Layout::NCHW => {
                let plane = out.len() / 3;
                let (o0, rest) = out.split_at_mut(plane);
                let (o1, o2) = rest.split_at_mut(plane);
                for (i, p) in pixels.pixels.chunks_exact(3).enumerate() {
                    o0[i] = t0[usize::from(p[s0])];
                    o1[i] = t1[usize::from(p[s1])];
                    o2[i] = t2[usize::from(p[s2])];
                }
            }
        }
    }

    /// Decoded image to tensor: [`Preprocessor::pixels`] then [`Preprocessor::tensor_into`].
    pub fn prepare(&self, image: &Rgb8, out: &mut [f32]) -> Result<(), PreprocessError> {
        let pixels = self.pixels(image)?;
        self.tensor_into(&pixels, out);
        Ok(())
    }
}

/// Resizes with `filter` exactly as Pillow 13's `Image.resize`.
pub fn resize(
    filter: ResizeFilter,
    image: &Rgb8,
    width: u32,
    height: u32,
) -> Result<Rgb8, PreprocessError> {
    if width == 0 || height == 0 || image.width == 0 || image.height == 0 {
        return Err(PreprocessError::new(
            ImageErrorKind::Decode,
            format!(
                "resize: cannot resize {}x{} to {width}x{height} (a side is 0)",
                image.width, image.height
            ),
        ));
    }
    if image.pixels.len() != image.width as usize * image.height as usize * 3 {
        return Err(PreprocessError::new(
            ImageErrorKind::Decode,
            format!(
                "resize: {} bytes for a {}x{} RGB image",
                image.pixels.len(),
                image.width,
                image.height
            ),
        ));
    }
    let from = (image.width, image.height);
    let to = (width, height);
    let convolve = |filter| resize_rgb8(filter, &image.pixels, from, to);
    let pixels = match filter {
        ResizeFilter::Nearest => resize_nearest(&image.pixels, from, to),
        ResizeFilter::Bilinear => convolve(Filter::Bilinear),
        ResizeFilter::Bicubic => convolve(Filter::Bicubic),
        ResizeFilter::Lanczos => convolve(Filter::Lanczos),
    };
    Ok(Rgb8 {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Preprocessing {
        Preprocessing {
            height: 4,
            width: 4,
            resize: ResizeFilter::Bicubic,
            resize_mode: ResizeMode::Stretch,
            resize_size: None,
            crop: None,
            scale: 1.0 / 255.0,
            offset: 0.0,
            mean: None,
            std: None,
            channel_order: ChannelOrder::RGB,
            layout: Layout::NHWC,
        }
    }

    #[test]
    fn checks_name_the_field_at_fault() {
        let bad = |f: &dyn Fn(&mut Preprocessing), needle: &str| {
            let mut s = spec();
            f(&mut s);
            let e = s.check().unwrap_err();
            assert!(e.contains(needle), "{e} (expected {needle})");
        };
        bad(&|s| s.mean = Some(vec![0.5; 2]), "mean has 2 values");
        bad(&|s| s.std = Some(vec![0.0, 1.0, 1.0]), "std must not be 0");
        bad(
            &|s| s.resize_mode = ResizeMode::ShorterSide,
            "needs resize_size",
        );
        bad(
            &|s| {
                s.resize_mode = ResizeMode::ShorterSide;
                s.resize_size = Some(8);
            },
            "add a crop",
        );
        bad(&|s| s.crop = Some([3, 4]), "crop [3, 4]");
        bad(&|s| s.resize_size = Some(8), "without a crop");
        assert!(spec().check().is_ok());
    }

    #[test]
    fn normalizes_with_mean_std_bgr_and_layouts() {
        let mut s = spec();
        s.height = 1;
        s.width = 2;
        s.scale = 1.0;
        s.mean = Some(vec![1.0, 2.0, 3.0]);
        s.std = Some(vec![2.0, 4.0, 8.0]);
        s.channel_order = ChannelOrder::BGR;
        let pixels = Rgb8 {
            width: 2,
            height: 1,
            pixels: vec![10, 20, 30, 40, 50, 60],
        };
        let mut out = [0f32; 6];
        Preprocessor::new(s.clone())
            .unwrap()
            .tensor_into(&pixels, &mut out);
        // Tensor channel 0 is blue: (30 - 1) / 2, then green (20 - 2) / 4, red (10 - 3) / 8.
        assert_eq!(out, [14.5, 4.5, 0.875, 29.5, 12.0, 4.625]);
        s.layout = Layout::NCHW;
        Preprocessor::new(s).unwrap().tensor_into(&pixels, &mut out);
        assert_eq!(out, [14.5, 29.5, 4.5, 12.0, 0.875, 4.625]);
    }

    #[test]
    fn without_mean_and_std_the_table_is_scale_and_offset() {
        let mut s = spec();
        s.scale = 0.007_843_138;
        s.offset = -1.0;
        let p = Preprocessor::new(s.clone()).unwrap();
        for v in 0..=255u8 {
            let want = f32::from(v) * s.scale + s.offset;
            assert_eq!(p.table[0][usize::from(v)].to_bits(), want.to_bits());
        }
    }

    #[test]
    fn shorter_side_then_crop_gives_the_input_size() {
        let mut s = spec();
        s.height = 6;
        s.width = 6;
        s.resize_mode = ResizeMode::ShorterSide;
        s.resize_size = Some(8);
        s.crop = Some([6, 6]);
        s.resize = ResizeFilter::Bilinear;
        let p = Preprocessor::new(s).unwrap();
        let image = Rgb8 {
            width: 30,
            height: 10,
            pixels: (0..900).map(|i| (i % 251) as u8).collect(),
        };
        assert_eq!(p.spec().resized_size(30, 10), (24, 8));
        let out = p.pixels(&image).unwrap();
        assert_eq!((out.width, out.height), (6, 6));
        assert_eq!(out.pixels.len(), 6 * 6 * 3);
    }
}
