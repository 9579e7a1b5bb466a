//! The command blocks of the README and `docs/` against the repository: every `sh`/`bash`
//! block parses (`bash -n`), every script or file under `infra/`, `models/`, `tests/` or
//! `examples/` it names exists (or is a file the steps make, which git ignores), and every
//! `featurize <subcommand> --flag` it runs names a subcommand and flags that `featurize
//! <subcommand> --help` lists. What needs an AWS
//! account cannot run here; this keeps the rest from drifting as the code moves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The text of the repository's file `path` after the first `marker` (which it must have).
fn text_after(path: &str, marker: &str) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    match text.split_once(marker) {
        Some((_, rest)) => rest.to_string(),
        None => panic!("{path} has no {marker:?}"),
    }
}

/// The README and every page under `docs/`.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    docs.extend(pages);
    docs
}

/// The fenced `sh` / `bash` / `console`-free shell blocks of a Markdown text, with their line.
fn shell_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence == "```sh" || fence == "```bash" => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if fence.starts_with("```") => blocks.push(current.take().expect("open block")),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Repository paths a block names: words starting with one of the repository's folders.
fn repo_paths(block: &str) -> BTreeSet<String> {
    block
        .split(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '(' | ')' | ';' | '|' | '=' | '`')
        })
        .map(|w| w.trim_start_matches("./").trim_end_matches([',', ':']))
        .filter(|w| {
            ["infra/", "models/", "tests/", "examples/", "functions/"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .filter(|w| !w.contains(['*', '$', '<', '{', '…']))
        .map(str::to_string)
        .collect()
}

/// `(subcommand, flags)` of each `featurize <sub> …` command of a block (through `cargo run
/// … --bin featurize --`, `target/*/featurize` or a bare `featurize`), continuation lines joined.
fn featurize_commands(block: &str) -> Vec<(String, Vec<String>)> {
    let joined = block.replace("\\\n", " ");
    let mut commands = Vec::new();
    for line in joined.lines() {
        let line = line.split(" #").next().unwrap_or(line);
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| {
            *w == "featurize"
                || w.ends_with("/featurize")
                || (*w == "--"
                    && (line.contains("--bin featurize") || line.contains("-p featurize")))
        }) else {
            continue;
        };
        let Some(sub) = words.get(at + 1) else {
            continue;
        };
        if sub.starts_with('-') || !sub.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let flags = words[at + 2..]
            .iter()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.split('=').next().unwrap_or(w).to_string())
            .collect();
        commands.push((sub.to_string(), flags));
    }
    commands
}

#[test]
fn command_blocks_parse_and_name_real_files_subcommands_and_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let featurize = env!("CARGO_BIN_EXE_featurize");
    let mut problems = Vec::new();
    let (mut blocks, mut commands) = (0, 0);
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let name = doc.strip_prefix(root).unwrap().display().to_string();
        for (line, block) in shell_blocks(&text) {
            blocks += 1;
            let syntax = Command::new("bash")
                .args(["-n", "-c", &block])
                .output()
                .expect("bash");
            if !syntax.status.success() {
                problems.push(format!(
                    "{name}:{line}: bash -n: {}",
                    String::from_utf8_lossy(&syntax.stderr).trim()
                ));
            }
            for path in repo_paths(&block) {
                // A file the documented steps make (the model, an env file) is ignored by git.
                let made = Command::new("git")
                    .args(["check-ignore", "-q", &path])
                    .current_dir(root)
                    .status()
                    .is_ok_and(|s| s.success());
                if !made && !root.join(&path).exists() {
                    problems.push(format!("{name}:{line}: {path} does not exist"));
                }
            }
            for (sub, flags) in featurize_commands(&block) {
                commands += 1;
                let help = Command::new(featurize)
                    .args([sub.as_str(), "--help"])
                    .output()
                    .expect("featurize");
                if !help.status.success() {
                    problems.push(format!(
                        "{name}:{line}: `featurize {sub}` is not a subcommand"
                    ));
                    continue;
                }
                let help = String::from_utf8_lossy(&help.stdout);
                for flag in flags {
                    if !help.contains(&format!("{flag} "))
                        && !help.contains(&format!("{flag}\n"))
                        && !help.contains(&format!("{flag}="))
                        && !help.contains(&format!("{flag} <"))
                    {
                        problems.push(format!("{name}:{line}: `featurize {sub}` has no {flag}"));
                    }
                }
            }
        }
    }
    assert!(
        blocks >= 20,
        "only {blocks} shell blocks found in the README and docs/"
    );
    assert!(commands >= 10, "only {commands} featurize commands found");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every `$NAME` a shell block of `docs/deploy.md` uses is set by the page itself (an
/// assignment, a `for` or `read` variable, a function's positional parameter) or by the
/// environment every shell has: a reader who runs the blocks in order never meets an
/// undefined variable (as `$SHARD_QUEUE_ARN` once was).
#[test]
fn deploy_page_defines_every_variable_it_uses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/deploy.md")).unwrap();
    let blocks = shell_blocks(&text);
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut defined: BTreeSet<String> = ["HOME", "PATH", "PWD", "RUN_ID"]
        .into_iter()
        .map(String::from)
        .collect();
    for (_, block) in &blocks {
        for line in block.lines() {
            for part in line.split([';', '&', '|', '(', ')']) {
                let part = part.trim().trim_start_matches("export ");
                if let Some((name, _)) = part.split_once('=') {
                    if !name.is_empty() && word(name) == name {
                        defined.insert(name.to_string());
                    }
                }
                for keyword in ["for ", "read -r ", "read "] {
                    if let Some(rest) = part.strip_prefix(keyword) {
                        defined.insert(word(rest));
                    }
                }
            }
        }
    }
    let mut undefined = Vec::new();
    for (line, block) in &blocks {
        // Comments are not run, and text inside single quotes is not expanded by the shell.
        let code: String = block
            .lines()
            .map(|l| match l.find(" #") {
                Some(at) => &l[..at],
                None if l.trim_start().starts_with('#') => "",
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let unquoted: String = code
            .split('\'')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        for (at, _) in unquoted.match_indices('$') {
            let name = word(unquoted[at + 1..].trim_start_matches('{'));
            let positional = name.chars().all(|c| c.is_ascii_digit()) || name.is_empty();
            if !positional && !defined.contains(&name) {
                undefined.push(format!("docs/deploy.md:{line}: ${name}"));
            }
        }
    }
    assert!(
        undefined.is_empty(),
        "variables used but never set on the page:\n{}",
        undefined.join("\n")
    );
}

/// The deploy page's build steps run from the repository, offline, up to the step that needs
/// an AWS account: each names an executable script; the model layer is staged (from
/// `../shared`'s model, checked against samconfig.toml's `ModelSha256`); and
/// `infra/preflight.sh` (the first step that talks to AWS) answers `--help` without one. The
/// long builds (`infra/build-lambdas.sh`, `infra/sam-build.sh`) are run by hand: see
/// docs/deploy.md for their last measured runs.
#[test]
fn deploy_steps_run_offline_up_to_the_account() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = text_after("docs/deploy.md", "\n## Build\n");
    let (_, steps) = shell_blocks(&build)
        .into_iter()
        .next()
        .expect("the Build section has a command block");
    let scripts: Vec<&str> = steps
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("infra/") || w.starts_with("models/"))
        .collect();
    for expected in [
        "models/get-model.sh",
        "infra/build-layer.sh",
        "infra/build-lambdas.sh",
        "infra/sam-build.sh",
    ] {
        assert!(
            scripts.contains(&expected),
            "the build steps lack {expected}: {scripts:?}"
        );
    }
    for script in &scripts {
        let meta = std::fs::metadata(root.join(script)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{script} is not executable"
        );
    }
    let model = std::env::var("MODEL_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/models/mobilenet_v2_features.onnx"));
    let layer = Command::new(root.join("infra/build-layer.sh"))
        .arg(&model)
        .current_dir(root)
        .output()
        .expect("infra/build-layer.sh");
    let out = String::from_utf8_lossy(&layer.stdout);
    assert!(
        layer.status.success(),
        "infra/build-layer.sh {}: {out}{}",
        model.display(),
        String::from_utf8_lossy(&layer.stderr)
    );
    assert!(out.contains("ModelSha256: "), "{out}");
    let help = Command::new(root.join("infra/preflight.sh"))
        .arg("--help")
        .output()
        .expect("infra/preflight.sh");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("UnreservedConcurrentExecutions"));
}

/// The settings `infra/local-emulator.sh` writes to `infra/emulator.env` name every variable
/// the functions cannot start without, and its numbers (shard size, its minimum, k) pass the
/// splitter's checks at start (`aws::config::limits_from`, as
/// `Config::from_env` calls it): with a shard size below the stack's minimum the function
/// exited at init, and `cargo lambda invoke` waited for it without end.
#[test]
fn the_local_emulators_settings_pass_the_splitters_start_checks() {
    let written = text_after(
        "infra/local-emulator.sh",
        "Path(\"infra/emulator.env\").write_text(",
    );
    let written = &written[..written.find("\nprint(").unwrap_or(written.len())];
    // The `NAME=value` assignments of the f-strings (their lines are joined by `\n`).
    let assignments: Vec<(&str, &str)> = written
        .split(|c: char| c == '"' || c.is_whitespace())
        .flat_map(|t| t.split("\\n"))
        .filter_map(|t| t.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    let numbers: std::collections::BTreeMap<String, String> = assignments
        .iter()
        .filter(|(_, value)| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for name in ["SHARD_SIZE", "MIN_SHARD_SIZE", "PCA_K"] {
        assert!(numbers.contains_key(name), "{name} not in {numbers:?}");
    }
    // The variables without a usable default: the functions stop at start without them (the
    // featurizer verifies its model against MODEL_SHA256).
    let names: BTreeSet<&str> = assignments.iter().map(|(name, _)| *name).collect();
    for name in [
        "BUCKET",
        "SHARD_QUEUE_URL",
        "REDUCE_QUEUE_URL",
        "MODEL_PATH",
        "MODEL_SPEC_PATH",
        "MODEL_SHA256",
    ] {
        assert!(
            names.contains(name),
            "infra/emulator.env has no {name}: {names:?}"
        );
    }
    let mut defaults = pipeline::manifest::RunOptions {
        shard_size: numbers["SHARD_SIZE"].parse().unwrap(),
        ..Default::default()
    };
    defaults.pca.k = numbers["PCA_K"].parse().unwrap();
    let get = |name: &str| numbers.get(name).cloned();
    let limits = aws::config::limits_from(&get, &defaults)
        .unwrap_or_else(|e| panic!("the emulator's settings {numbers:?} are refused: {e}"));
    assert!(limits.min_shard_size <= defaults.shard_size);
    // Without its MIN_SHARD_SIZE the stack's minimum applies, and the shard size is refused.
    let without = |name: &str| (name != "MIN_SHARD_SIZE").then(|| get(name)).flatten();
    let refused = aws::config::limits_from(&without, &defaults).unwrap_err();
    assert!(refused.to_string().contains("shard_size"), "{refused}");
}
