//! The model's spec: how to feed it (`model_spec.json`, a `--model-spec` file or a preset),
//! its check against the model's declared input, and what a run records about it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;

pub use crate::preprocess::{ChannelOrder, Layout, ResizeFilter, ResizeMode};
use crate::preprocess::{Preprocessing, Preprocessor};

/// How to feed a model: read from `model_spec.json` beside the model, a `--model-spec` file,
/// or a named preset ([`PRESETS`]), so that another ONNX image model is fed exactly as it was
/// trained without code changes. The fields are documented in `docs/model.md`; unknown fields
/// are refused (a misspelt option would otherwise be quietly ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Human-readable name.
    pub name: String,
    /// ONNX input name; empty (or absent): the model's first input. Filled in at load.
    #[serde(default)]
    pub input_name: String,
    /// ONNX output name (the features); empty (or absent): the model's first output.
    /// Filled in at load.
    #[serde(default)]
    pub output_name: String,
    /// Input layout.
    pub layout: Layout,
    /// Input height.
    pub height: u32,
    /// Input width.
    pub width: u32,
    /// Channels (3: RGB or BGR).
    #[serde(default = "three")]
    pub channels: u32,
    /// Resize filter, exact to Pillow's `Image.resize` with it.
    pub resize: ResizeFilter,
    /// `stretch` (to `height` x `width`, or `resize_size` square before a crop) or
    /// `shorter_side` (torchvision's `Resize(resize_size)`).
    #[serde(default)]
    pub resize_mode: ResizeMode,
    /// The shorter side (`shorter_side`), or the square a stretch goes to before a crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_size: Option<u32>,
    /// Centre crop `[height, width]` after the resize (torchvision's `CenterCrop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<[u32; 2]>,
    /// Pixel scale: `x = pixel * scale + offset` ...
    pub scale: f32,
    /// Pixel offset.
    pub offset: f32,
    /// ... then `(x - mean[c]) / std[c]`, one value per tensor channel (in `channel_order`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// See `mean`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// `RGB` (default) or `BGR`.
    #[serde(default)]
    pub channel_order: ChannelOrder,
}

fn three() -> u32 {
    3
}

/// The spec of the bundled MobileNetV2 (`models/model_spec.json`).
pub const DEFAULT_SPEC_JSON: &str = include_str!("../../../../models/model_spec.json");

/// The named specs `--model-spec NAME` accepts (`models/presets/`): `keras-mobilenet`
/// (the bundled model's), `torchvision` and `clip`.
pub const PRESETS: [(&str, &str); 3] = [
    ("keras-mobilenet", DEFAULT_SPEC_JSON),
    (
        "torchvision",
        include_str!("../../../../models/presets/torchvision.json"),
    ),
    ("clip", include_str!("../../../../models/presets/clip.json")),
];

impl ModelSpec {
    /// The bundled MobileNetV2 spec.
    pub fn mobilenet_v2() -> Self {
        serde_json::from_str(DEFAULT_SPEC_JSON).expect("models/model_spec.json is valid")
    }

    /// A named preset ([`PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, json)| serde_json::from_str(json).expect("the presets are valid"))
    }

    /// The preset names, comma-separated (for messages and help).
    pub fn preset_names() -> String {
        PRESETS.map(|(n, _)| n).join(", ")
    }

    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let err = |reason: String| ModelError::Spec {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(format!(
                "{e} (not a file, nor a preset: {})",
                Self::preset_names()
            ))
        })?;
        Self::parse(&text).map_err(err)
    }

    /// Parses and checks a spec's JSON.
    pub fn parse(json: &str) -> Result<Self, String> {
        let spec: Self = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.check()?;
        Ok(spec)
    }

    /// `--model-spec`'s value: a preset name or a spec file.
    pub fn resolve(name_or_path: &Path) -> Result<Self, ModelError> {
        if !name_or_path.is_file() {
            if let Some(spec) = name_or_path.to_str().and_then(Self::preset) {
                return Ok(spec);
            }
        }
        Self::load(name_or_path)
    }

    /// The explicit spec (a preset name or a file), else `<dir>/model_spec.json` beside the
    /// model, else the bundled one.
    pub fn for_model(model_path: &Path, explicit: Option<&Path>) -> Result<Self, ModelError> {
        if let Some(path) = explicit {
            return Self::resolve(path);
        }
        let beside = model_path.with_file_name("model_spec.json");
        if beside.is_file() {
            Self::load(&beside)
        } else {
            Ok(Self::mobilenet_v2())
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        if self.channels != 3 {
            return Err(format!(
                "{} channels: only 3-channel (RGB or BGR) inputs are supported",
                self.channels
            ));
        }
        self.preprocessing().check()
    }

    /// The preprocessing part of the spec.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            height: self.height,
            width: self.width,
            resize: self.resize,
            resize_mode: self.resize_mode,
            resize_size: self.resize_size,
            crop: self.crop,
            scale: self.scale,
            offset: self.offset,
            mean: self.mean.clone(),
            std: self.std.clone(),
            channel_order: self.channel_order,
            layout: self.layout,
        }
    }

    /// The preprocessing, ready to run (one per thread, or shared: it is immutable).
    pub fn preprocessor(&self) -> Result<Preprocessor, ModelError> {
        Preprocessor::new(self.preprocessing()).map_err(|reason| ModelError::Spec {
            path: self.name.clone(),
            reason,
        })
    }

    /// sha256 (hex) of the spec's canonical JSON: runs record it with the model's, so that
    /// the run id changes with the preprocessing.
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).expect("a spec serializes");
        Sha256::digest(json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// sha256 of the built-in MobileNetV2 spec ([`ModelSpec::mobilenet_v2`]): the template's
    /// `ModelSpecSha256` default and `models/model_spec.json.sha256`. Runs made with this spec
    /// keep the run ids they had before the spec was part of them.
    pub fn builtin_sha256() -> String {
        Self::mobilenet_v2().sha256()
    }

    /// Whether this is the built-in MobileNetV2 spec.
    pub fn is_builtin(&self) -> bool {
        *self == Self::mobilenet_v2()
    }

    /// Number of floats of one input image.
    pub fn input_len(&self) -> usize {
        (self.width * self.height * self.channels) as usize
    }

    pub(super) fn input_shape(&self) -> [usize; 4] {
        let (h, w, c) = (
            self.height as usize,
            self.width as usize,
            self.channels as usize,
        );
        match self.layout {
            Layout::NHWC => [1, h, w, c],
            Layout::NCHW => [1, c, h, w],
        }
    }

    /// Compares the spec with the model's declared input shape (`None`: a symbolic or
    /// unknown dimension, which fits anything); the message names the mismatch.
    pub(super) fn check_input_shape(
        &self,
        input: &str,
        declared: &[Option<usize>],
    ) -> Result<(), String> {
        let show = |dims: &[Option<usize>]| {
            let dims: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect();
            format!("[{}]", dims.join(", "))
        };
        let fits = |shape: [usize; 4]| {
            declared.len() == 4
                && declared
                    .iter()
                    .zip(shape)
                    .skip(1)
                    .all(|(d, s)| d.is_none_or(|d| d == s))
        };
        let want = self.input_shape();
        if fits(want) {
            return Ok(());
        }
        let (h, w, c) = (self.height, self.width, self.channels);
        let mut message = format!(
            "the model's input {input:?} has shape {}, the spec ({:?}, {h}x{w}, {c} channels)              gives [N, {}]",
            show(declared),
            self.layout,
            want[1..]
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let other = match self.layout {
            Layout::NHWC => Layout::NCHW,
            Layout::NCHW => Layout::NHWC,
        };
        let swapped = Self {
            layout: other,
            ..self.clone()
        };
        if fits(swapped.input_shape()) {
            message += &format!(": set \"layout\": \"{other:?}\"");
        } else if declared.len() == 4 {
            message += ": set height, width (and crop) to the model's input size";
        } else {
            message += ": only image inputs of rank 4 are supported";
        }
        Err(message)
    }
}

/// What a run records about its model: its name, the sha256 of its file and its spec (with
/// the spec's own sha256), so that the run's id can change with any of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The spec's name.
    pub name: String,
    /// sha256 of the ONNX file.
    pub sha256: String,
    /// sha256 of the spec's canonical JSON ([`ModelSpec::sha256`]).
    pub spec_sha256: String,
    /// The spec, input and output names resolved.
    pub spec: ModelSpec,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_check() {
        for (name, json) in PRESETS {
            let spec = ModelSpec::parse(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ModelSpec::preset(name), Some(spec.clone()));
            assert_eq!((spec.height, spec.width), (224, 224), "{name}");
        }
        let torchvision = ModelSpec::preset("torchvision").unwrap();
        assert_eq!(torchvision.layout, Layout::NCHW);
        assert_eq!(torchvision.resize, ResizeFilter::Bilinear);
        assert_eq!(torchvision.resize_mode, ResizeMode::ShorterSide);
        assert_eq!(torchvision.resize_size, Some(256));
        assert_eq!(torchvision.crop, Some([224, 224]));
        assert!(
            torchvision.input_name.is_empty(),
            "names come from the model"
        );
        let clip = ModelSpec::preset("clip").unwrap();
        assert_eq!(
            (clip.resize, clip.resize_size),
            (ResizeFilter::Bicubic, Some(224))
        );
        assert_eq!(
            ModelSpec::preset("keras-mobilenet"),
            Some(ModelSpec::mobilenet_v2())
        );
        assert_eq!(
            ModelSpec::preset_names(),
            "keras-mobilenet, torchvision, clip"
        );
        assert!(ModelSpec::preset("resnet").is_none());
    }

    #[test]
    fn unknown_fields_and_filters_are_refused() {
        let json = DEFAULT_SPEC_JSON.replace("\"resize\"", "\"resize_mod\": 1, \"resize\"");
        let e = ModelSpec::parse(&json).unwrap_err();
        assert!(e.contains("unknown field `resize_mod`"), "{e}");
        let json = DEFAULT_SPEC_JSON.replace("\"bicubic\"", "\"area\"");
        let e = ModelSpec::parse(&json).unwrap_err();
        assert!(e.contains("unknown variant `area`"), "{e}");
    }

    #[test]
    fn the_builtin_spec_sha256_is_the_recorded_one() {
        let recorded = include_str!("../../../../models/model_spec.json.sha256");
        let recorded = recorded.split_whitespace().next().unwrap();
        assert_eq!(
            ModelSpec::builtin_sha256(),
            recorded,
            "models/model_spec.json changed: update models/model_spec.json.sha256 and the \
             template's ModelSpecSha256 default"
        );
        assert!(ModelSpec::mobilenet_v2().is_builtin());
        assert!(!ModelSpec::preset("torchvision").unwrap().is_builtin());
    }

    #[test]
    fn specs_differ_by_their_sha256() {
        let a = ModelSpec::preset("torchvision").unwrap();
        let mut b = a.clone();
        b.resize = ResizeFilter::Bicubic;
        assert_ne!(a.sha256(), b.sha256());
        assert_eq!(a.sha256(), a.clone().sha256());
    }

    #[test]
    fn input_shape_mismatches_are_named() {
        let spec = ModelSpec::preset("torchvision").unwrap();
        assert!(spec
            .check_input_shape("x", &[None, Some(3), Some(224), Some(224)])
            .is_ok());
        let e = spec
            .check_input_shape("x", &[Some(1), Some(224), Some(224), Some(3)])
            .unwrap_err();
        assert!(e.contains("\"x\" has shape [1, 224, 224, 3]"), "{e}");
        assert!(e.contains("set \"layout\": \"NHWC\""), "{e}");
        let e = spec
            .check_input_shape("x", &[None, Some(3), Some(256), Some(256)])
            .unwrap_err();
        assert!(e.contains("gives [N, 3, 224, 224]"), "{e}");
        assert!(e.contains("set height, width"), "{e}");
        let e = spec.check_input_shape("x", &[None, Some(10)]).unwrap_err();
        assert!(e.contains("rank 4"), "{e}");
    }
}
