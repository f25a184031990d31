//! `spar analyze`: check Istio configuration offline, for people and for CI.
//!
//! Reads files, directories (recursively, `*.yaml`/`*.yml`) and standard input (`-`),
//! runs the analyzers of `spar-analyze`, and prints the findings in one format on
//! standard output; everything else goes to standard error. The exit code is the same
//! whatever the format: see [`EXIT_FINDINGS`] and [`EXIT_USAGE`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use spar_analyze::output::{self, Format};
use spar_analyze::{Context, Level, LoadOptions, Loaded, Message, Suppression, analyzers};
use spar_model::MeshConfig;

/// Findings at or above `--failure-threshold` (istioctl's `ExitAnalyzerFoundIssues`).
pub const EXIT_FINDINGS: i32 = 79;
/// Bad flags or unreadable input (clap uses the same code for its own usage errors).
pub const EXIT_USAGE: i32 = 2;

/// The name under which the field-support check is listed and selected.
const FIELD_SUPPORT: &str = "spar.FieldSupportAnalyzer";
/// `SPAR0001` FieldNotActedOn.
const FIELD_NOT_ACTED_ON: &str = "SPAR0001";
/// `SPAR0005` EnvoyFilterPatchNotApplied.
const ENVOY_FILTER_PATCH: &str = "SPAR0005";

#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Files, directories (searched recursively for *.yaml and *.yml) or `-` for standard input.
    #[arg(value_name = "FILE|DIR|-")]
    paths: Vec<PathBuf>,
    /// Output format: log, json, yaml or sarif.
    #[arg(long, short = 'o', default_value = "log", value_parser = ["log", "json", "yaml", "sarif"])]
    output: String,
    /// Exit with 79 when a message at or above this level is found (Info, Warning, Error).
    #[arg(long, default_value = "Error", value_parser = parse_level)]
    failure_threshold: Level,
    /// Print only messages at or above this level (Info, Warning, Error).
    #[arg(long, default_value = "Info", value_parser = parse_level)]
    output_threshold: Level,
    /// Silence a code on resources: "CODE=Kind name.namespace", `*` wildcards (repeatable).
    #[arg(long, short = 'S', value_name = "CODE=Kind name.ns")]
    suppress: Vec<String>,
    /// List the analyzers and the codes each can report, then exit.
    #[arg(long, short = 'L')]
    list_analyzers: bool,
    /// Run only this analyzer (repeatable); default: all of them.
    #[arg(long = "analyzer", value_name = "NAME")]
    analyzers: Vec<String>,
    /// MeshConfig YAML (rootNamespace, defaultConfig, outboundTrafficPolicy, ...), as istioctl.
    #[arg(long = "meshConfigFile", alias = "mesh-config-file", value_name = "FILE")]
    mesh_config_file: Option<PathBuf>,
    /// Namespace for documents that do not set one.
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// Report selectors that match no Pod even when the input lists no Pods (istioctl's behaviour).
    #[arg(long)]
    strict_selectors: bool,
    /// Accepted for istioctl compatibility: directories are always searched recursively.
    #[arg(long, short = 'R')]
    recursive: bool,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

/// Runs the command and returns the process exit code.
pub fn run(args: AnalyzeArgs) -> i32 {
    match analyze(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spar analyze: {e}");
            EXIT_USAGE
        }
    }
}

fn list_analyzers() -> String {
    let mut out = String::new();
    for a in analyzers::all() {
        out.push_str(&format!("{}\n    {}\n    codes: {}\n", a.name, a.description, a.codes.join(", ")));
    }
    out.push_str(&format!(
        "{FIELD_SUPPORT}\n    Lists fields Spar parses but does not act on yet, and EnvoyFilter patches it cannot apply\n    codes: {FIELD_NOT_ACTED_ON}, {ENVOY_FILTER_PATCH}\n"
    ));
    out
}

fn analyze(args: &AnalyzeArgs) -> Result<i32, String> {
    if args.list_analyzers {
        print!("{}", list_analyzers());
        return Ok(0);
    }
    let format: Format = args.output.parse()?;
    let suppressions = args.suppress.iter().map(|s| s.parse()).collect::<Result<Vec<Suppression>, _>>()?;
    let field_support = args.analyzers.is_empty() || args.analyzers.iter().any(|a| a == FIELD_SUPPORT);
    let names: Vec<String> = args.analyzers.iter().filter(|a| *a != FIELD_SUPPORT).cloned().collect();
    let selected = if names.is_empty() && !args.analyzers.is_empty() {
        Vec::new()
    } else {
        spar_analyze::select_analyzers(&names)?
    };
    if args.paths.is_empty() {
        return Err("nothing to analyze: give files, directories or - for standard input".into());
    }
    let mesh = match &args.mesh_config_file {
        None => MeshConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("--meshConfigFile {}: {e}", p.display()))?;
            MeshConfig::from_yaml(&text).map_err(|e| format!("--meshConfigFile {}: {e}", p.display()))?
        }
    };

    let opts = LoadOptions { default_namespace: args.namespace.clone(), cluster: String::new() };
    let mut loaded = Loaded::default();
    let mut files = 0usize;
    let mut stdin_read = false;
    for p in &args.paths {
        if p.as_os_str() == "-" {
            if stdin_read {
                continue;
            }
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| format!("standard input: {e}"))?;
            loaded.add_text("<stdin>", &text, &opts);
            files += 1;
            continue;
        }
        for f in expand(p)? {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            loaded.add_text(&f.display().to_string(), &text, &opts);
            files += 1;
        }
    }
    loaded.add_default_resources(&mesh);
    let mut messages = std::mem::take(&mut loaded.messages);
    let ctx = Context::new(loaded.resources, mesh, None).with_strict_selectors(args.strict_selectors);
    messages.extend(spar_analyze::run(&ctx, &selected));
    if field_support {
        messages.extend(unacted_fields(&ctx));
        messages.extend(envoy_filter_patches(&ctx));
    }
    spar_analyze::sort(&mut messages);
    messages.retain(|m| !suppressions.iter().any(|s| s.matches(m)));

    let failed = messages.iter().any(|m| m.level() >= args.failure_threshold);
    let shown: Vec<Message> = messages.into_iter().filter(|m| m.level() >= args.output_threshold).collect();
    let text = output::render(format, &shown).map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(|e| format!("writing output: {e}"))?;
    if format == Format::Log && shown.is_empty() {
        eprintln!("\u{2714} No validation issues found when analyzing {files} input(s).");
    }
    Ok(if failed { EXIT_FINDINGS } else { 0 })
}

/// A path as files: itself, or the `*.yaml`/`*.yml` files under a directory, sorted.
fn expand(p: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !meta.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `SPAR0005`: EnvoyFilter patches Spar cannot apply (a value Envoy's schema refuses,
/// an unsupported field or operation), one message per patch.
fn envoy_filter_patches(ctx: &Context) -> Vec<Message> {
    let Some(kind) = spar_analyze::message_type(ENVOY_FILTER_PATCH) else { return Vec::new() };
    let mut out = Vec::new();
    for r in ctx.resources() {
        let Some(spar_api::Object { resource: spar_api::Resource::EnvoyFilter(spec), .. }) = r.object.as_ref() else {
            continue;
        };
        if analyzers::suppressed_by_annotation(r, ENVOY_FILTER_PATCH) {
            continue;
        }
        for (i, p) in spec.config_patches.iter().flatten().enumerate() {
            let Err(reason) = spar_generate::generator::envoy_filter::check(p) else { continue };
            let at = format!("spec.configPatches[{i}]");
            out.push(Message {
                kind,
                text: kind.render(&[at.clone(), reason.to_string()]),
                subject: Some(r.subject()),
                file: r.origin.file.to_string(),
                line: r.line_of(&at),
                analyzer: FIELD_SUPPORT,
            });
        }
    }
    out
}

/// `SPAR0001`: fields Spar parses and keeps but does not act on, one message per field.
fn unacted_fields(ctx: &Context) -> Vec<Message> {
    let Some(kind) = spar_analyze::message_type(FIELD_NOT_ACTED_ON) else { return Vec::new() };
    let mut out = Vec::new();
    for r in ctx.resources() {
        let Some(obj) = &r.object else { continue };
        if analyzers::suppressed_by_annotation(r, FIELD_NOT_ACTED_ON) {
            continue;
        }
        for field in spar_generate::support::unacted_fields(obj) {
            // `spec.http[].fault` → the first occurrence, `spec.http[0].fault`, for its line.
            let first = field.replace("[]", "[0]");
            out.push(Message {
                kind,
                text: kind.render(&[field]),
                subject: Some(r.subject()),
                file: r.origin.file.to_string(),
                line: r.line_of(&first),
                analyzer: FIELD_SUPPORT,
            });
        }
    }
    out
}
