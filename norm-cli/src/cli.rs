//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use norm_train::{Arch, NoiseOn, NormChoice, NormKind, RunningFrom, Schedule, TrainConfig, data};

use crate::sweep::{Seeds, Share};

/// Normalisation layers for CNNs: train, run the batch-size study of the Group Normalization
/// paper, export its data, and apply a layer to NumPy arrays.
#[derive(Debug, Parser)]
#[command(name = "norm-cli", version, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the CNN once and report test accuracy.
    Train(TrainArgs),
    /// Test accuracy of a saved model; optionally re-estimate BatchNorm's statistics.
    Eval(EvalArgs),
    /// Train every norm × batch × seed cell and tabulate accuracy against batch size.
    Sweep(SweepArgs),
    /// Rebuild summary and plot from one or more sweep folders (merging them).
    Report(ReportArgs),
    /// Work with the data sets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Apply one normalisation layer (forward, optionally backward) to .npy arrays.
    Apply(ApplyArgs),
}

/// `--norm` / `--norms` values: every norm of the kernels' descriptor, with its one-line help,
/// and `none` where the CNN may have no norm.
fn norm_values(with_none: bool) -> impl clap::builder::TypedValueParser<Value = NormChoice> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = NormChoice::all()
        .into_iter()
        .filter(move |c| with_none || *c != NormChoice::None)
        .map(|c| PossibleValue::new(c.name()).help(c.about()));
    PossibleValuesParser::new(values).map(|s| s.parse::<NormChoice>().expect("a listed value"))
}

fn train_norms() -> impl clap::builder::TypedValueParser<Value = NormChoice> {
    norm_values(true)
}

fn kernel_norms() -> impl clap::builder::TypedValueParser<Value = NormKind> {
    use clap::builder::TypedValueParser;
    norm_values(false).map(|c| c.kind().expect("none is not listed"))
}

/// The network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum ModelArg {
    /// Three conv → norm → ReLU blocks (pool after the first two), GAP, linear (--widths).
    Plain,
    /// CIFAR ResNet-8 (He et al. 2016): 3 stages of 1 basic block at 16/32/64 × --width.
    Resnet8,
    /// CIFAR ResNet-14: 3 stages of 2 basic blocks.
    Resnet14,
    /// CIFAR ResNet-20: 3 stages of 3 basic blocks.
    Resnet20,
}

impl From<ModelArg> for Arch {
    fn from(m: ModelArg) -> Self {
        match m {
            ModelArg::Plain => Self::Plain,
            ModelArg::Resnet8 => Self::Resnet8,
            ModelArg::Resnet14 => Self::Resnet14,
            ModelArg::Resnet20 => Self::Resnet20,
        }
    }
}

/// Which worker shares update BatchNorm's running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunningFromArg {
    /// Worker 0's share, as PyTorch's DistributedDataParallel keeps rank 0's buffers.
    Worker0,
    /// Every share in turn (one momentum update per share).
    Every,
}

impl From<RunningFromArg> for RunningFrom {
    fn from(r: RunningFromArg) -> Self {
        match r {
            RunningFromArg::Worker0 => Self::Worker0,
            RunningFromArg::Every => Self::Every,
        }
    }
}

/// Which gradient tensors --grad-noise perturbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NoiseOnArg {
    /// Every parameter.
    All,
    /// The conv and linear weights.
    Weights,
    /// The norms' γ and β and the biases.
    Others,
}

impl From<NoiseOnArg> for NoiseOn {
    fn from(r: NoiseOnArg) -> Self {
        match r {
            NoiseOnArg::All => Self::All,
            NoiseOnArg::Weights => Self::Weights,
            NoiseOnArg::Others => Self::Others,
        }
    }
}

/// Where the images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataSource {
    /// The built-in synthetic CIFAR-like set (generated from --data-seed).
    Synthetic,
    /// CIFAR-10 binary files in --data-dir.
    Cifar10,
}

/// Learning-rate schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// Half a cosine from the peak rate to 0.
    Cosine,
    /// ×0.1 at 50 % and again at 75 % of the steps.
    Step,
}

/// norm-train's defaults, shown in `--help` and used for every unset option.
fn defaults() -> TrainConfig {
    TrainConfig::default()
}

/// Everything a sweep keeps fixed across cells (the "recipe"), shared by `train` and `sweep`.
#[derive(Debug, Clone, Args)]
pub struct RecipeArgs {
    /// Epochs to train.
    #[arg(long, default_value_t = defaults().epochs, allow_negative_numbers = true)]
    pub epochs: usize,
    /// Base learning rate, before scaling by batch / lr-ref-batch (linear scaling rule).
    #[arg(long, default_value_t = defaults().base_lr, allow_negative_numbers = true)]
    pub lr: f32,
    /// Batch size at which the learning rate equals --lr.
    #[arg(long, value_name = "B", default_value_t = defaults().lr_ref_batch, allow_negative_numbers = true)]
    pub lr_ref_batch: usize,
    /// Learning-rate schedule after warmup.
    #[arg(long, value_enum, default_value_t = ScheduleArg::from(defaults().schedule))]
    pub schedule: ScheduleArg,
    /// Epochs of linear learning-rate warmup (fractions allowed).
    #[arg(long, value_name = "EPOCHS", default_value_t = defaults().warmup_epochs, allow_negative_numbers = true)]
    pub warmup: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = defaults().momentum, allow_negative_numbers = true)]
    pub momentum: f32,
    /// Weight decay.
    #[arg(long, value_name = "WD", default_value_t = defaults().weight_decay, allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Train without augmentation (random crop and flip).
    #[arg(long)]
    pub no_augment: bool,
    /// The network.
    #[arg(long, value_enum, default_value_t = ModelArg::Plain)]
    pub model: ModelArg,
    /// ResNets: channel multiplier of the 16/32/64-channel stages [default: 1].
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub width: Option<f32>,
    /// Plain CNN: channel widths of the three conv stages.
    #[arg(long, value_name = "W1,W2,W3", default_value_t = Widths(defaults().model.widths), allow_negative_numbers = true)]
    pub widths: Widths,
    /// With workers: which shares update BatchNorm's running statistics.
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = RunningFromArg::Worker0)]
    pub running_from: RunningFromArg,
    /// Groups of GroupNorm (must divide every width).
    #[arg(long, value_name = "G", default_value_t = norm_train::DEFAULT_GROUPS, allow_negative_numbers = true)]
    pub groups: usize,
    /// Epsilon of the normalisation layers.
    #[arg(long, default_value_t = norm_train::DEFAULT_EPS, allow_negative_numbers = true)]
    pub eps: f32,
    /// Data set.
    #[arg(long, value_enum, default_value_t = DataSource::Synthetic)]
    pub data: DataSource,
    /// Folder of the CIFAR-10 binary files (with --data cifar10).
    #[arg(long, value_name = "DIR", required_if_eq("data", "cifar10"))]
    pub data_dir: Option<PathBuf>,
    /// Train images: synthetic, how many to generate; cifar10, use the first N [default: all].
    #[arg(long, value_name = "N", help = size_help("Train", "N", data::DEFAULT_TRAIN), allow_negative_numbers = true)]
    pub train_size: Option<usize>,
    /// Test images: synthetic, how many to generate; cifar10, use the first M [default: all].
    #[arg(long, value_name = "M", help = size_help("Test", "M", data::DEFAULT_TEST), allow_negative_numbers = true)]
    pub test_size: Option<usize>,
    /// Seed of the synthetic data set.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub data_seed: u64,
    /// A norm setting KEY=VALUE, for every norm that has KEY (repeatable): e.g. r_max=2,
    /// d_max=3 for BatchRenorm, momentum=0.01 (see `apply --help` for the norms).
    #[arg(
        long = "norm-set",
        value_name = "KEY=VALUE",
        allow_hyphen_values = true
    )]
    pub norm_set: Vec<String>,
    /// Share of training (0 to 1) over which a norm with a warm-up of its settings reaches
    /// them (BatchRenorm: r_max from 1, d_max from 0, as in its paper); 0: none.
    #[arg(
        long,
        value_name = "SHARE",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub norm_ramp: f32,
    /// A probe, not a recipe: Gaussian noise of this size relative to each gradient tensor's
    /// RMS added before every update (float32 rounding is about 3e-7 in a typical step); 0: none
    #[arg(
        long,
        value_name = "SIZE",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub grad_noise: f32,
    /// Which gradient tensors get --grad-noise (each gets the draws it gets under `all`)
    #[arg(long, value_enum, value_name = "WHICH", default_value_t = NoiseOnArg::All)]
    pub grad_noise_on: NoiseOnArg,
}

fn size_help(what: &str, n: &str, synthetic: usize) -> String {
    format!(
        "{what} images: synthetic, how many to generate [default: {synthetic}]; cifar10, use the \
         first {n} [default: all]"
    )
}

/// `--widths 16,32,64`: the three conv widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths(pub [usize; 3]);

impl std::fmt::Display for Widths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.0[0], self.0[1], self.0[2])
    }
}

impl std::str::FromStr for Widths {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<usize> = s
            .split(',')
            .map(|t| {
                t.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`{t}` is not a width"))
            })
            .collect::<Result<_, _>>()?;
        let arr: [usize; 3] = v
            .try_into()
            .map_err(|_| format!("`{s}` is not three widths W1,W2,W3"))?;
        Ok(Self(arr))
    }
}

impl From<Schedule> for ScheduleArg {
    fn from(s: Schedule) -> Self {
        match s {
            Schedule::Cosine => Self::Cosine,
            Schedule::Step => Self::Step,
        }
    }
}

impl From<ScheduleArg> for Schedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Cosine => Self::Cosine,
            ScheduleArg::Step => Self::Step,
        }
    }
}

/// Options that do not change results.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Run everything inside a rayon pool of N threads (default: all cores).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub threads: Option<usize>,
}

/// `norm-cli train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Normalisation layer.
    #[arg(long, value_parser = train_norms(), default_value = "group")]
    pub norm: NormChoice,
    /// Images per step.
    #[arg(long, default_value_t = defaults().batch, allow_negative_numbers = true)]
    pub batch: usize,
    /// Data-parallel workers: BatchNorm's statistics per share of batch/W images.
    #[arg(long, value_name = "W", default_value_t = defaults().workers)]
    pub workers: usize,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Save the trained model to this file (.safetensors; PyTorch loads it), with its training
    /// curves beside it (PATH without extension + .curves.svg/.png).
    #[arg(long, value_name = "PATH")]
    pub save: Option<PathBuf>,
    /// Draw the training curves (test accuracy, train loss per epoch) into DIR/training_curves.svg
    /// and .png.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Print the report as one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// The recipe.
    #[command(flatten, next_help_heading = "Recipe")]
    pub recipe: RecipeArgs,
    /// Execution.
    #[command(flatten, next_help_heading = "Execution")]
    pub run: RunArgs,
}

/// `norm-cli eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Checkpoint written by `train --save` (.safetensors).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Re-estimate BatchNorm's running statistics from the first N training images (precise BN:
    /// the average of batch statistics in train mode, weights fixed); report accuracy before and
    /// after.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub recalibrate_bn: Option<usize>,
    /// Images per forward pass of --recalibrate-bn.
    #[arg(long, value_name = "B", default_value_t = norm_train::EVAL_BATCH, requires = "recalibrate_bn", allow_negative_numbers = true)]
    pub recalibrate_batch: usize,
    /// Give the images of --recalibrate-bn the training augmentation (pad-4 crop and flip, from a
    /// fixed seed): the statistics of the inputs the weights were trained on.
    #[arg(long, requires = "recalibrate_bn")]
    pub recalibrate_augment: bool,
    /// Write the recalibrated model to this file (needs --recalibrate-bn).
    #[arg(long, value_name = "FILE", requires = "recalibrate_bn")]
    pub save: Option<PathBuf>,
    /// Print the result as one JSON object (its `test_acc` is after re-estimation when there is
    /// one; `recalibrated.test_acc_before` is the accuracy as trained).
    #[arg(long)]
    pub json: bool,
    /// Data set; the one the checkpoint was trained on if unset.
    #[arg(long, value_enum, help_heading = "Data")]
    pub data: Option<DataSource>,
    /// Folder of the CIFAR-10 binary files (a checkpoint trained on CIFAR-10 needs it).
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    pub data_dir: Option<PathBuf>,
    /// Train images (synthetic: how many to generate; cifar10: the first N); as trained if unset.
    #[arg(
        long,
        value_name = "N",
        help_heading = "Data",
        allow_negative_numbers = true
    )]
    pub train_size: Option<usize>,
    /// Test images (synthetic: how many to generate; cifar10: the first M); as trained if unset.
    #[arg(
        long,
        value_name = "M",
        help_heading = "Data",
        allow_negative_numbers = true
    )]
    pub test_size: Option<usize>,
    /// Seed of the synthetic data set; as trained if unset.
    #[arg(
        long,
        value_name = "S",
        help_heading = "Data",
        allow_negative_numbers = true
    )]
    pub data_seed: Option<u64>,
    /// Execution.
    #[command(flatten, next_help_heading = "Execution")]
    pub run: RunArgs,
}

/// `norm-cli sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// Norms to compare, comma-separated.
    #[arg(
        long,
        value_parser = train_norms(),
        value_delimiter = ',',
        default_value = "batch,layer,instance,group"
    )]
    pub norms: Vec<NormChoice>,
    /// Batch sizes, comma-separated (one worker each).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,4,8,16,32",
        allow_negative_numbers = true
    )]
    pub batches: Vec<usize>,
    /// Images per worker at the fixed total --batch, comma-separated, instead of --batches:
    /// BatchNorm runs with batch/K workers; norms that do not depend on the split run once,
    /// with one worker.
    #[arg(long, value_name = "K,...", value_delimiter = ',', requires = "batch")]
    pub per_worker: Option<Vec<usize>>,
    /// The total batch of a --per-worker sweep.
    #[arg(long, value_name = "B", requires = "per_worker")]
    pub batch: Option<usize>,
    /// Seeds: N for 0..N, A..B for a range (B excluded), or a list a,b,c.
    #[arg(long, default_value = "3", allow_negative_numbers = true)]
    pub seeds: Seeds,
    /// Sweep folder (created; reused to resume).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Run only the I-th of K shares of the cells (1-based), e.g. 2/4 [default: in a Slurm array
    /// job, the task's share from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT].
    #[arg(long, value_name = "I/K", allow_negative_numbers = true)]
    pub cells: Option<Share>,
    /// After each cell of a norm with running statistics, also re-estimate them from the first N
    /// training images with the training augmentation (precise BN, weights fixed), once over
    /// batches of the cell's images per worker and once over batches of its whole batch, and
    /// record both test accuracies.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub recalibrate_bn: Option<usize>,
    /// Save each finished cell's trained model (before any --recalibrate-bn) as a checkpoint for
    /// `eval`: DIR/models/<norm>-b<batch>[-k<per worker>]-s<seed>.safetensors.
    #[arg(long)]
    pub save_models: bool,
    /// The recipe.
    #[command(flatten, next_help_heading = "Recipe")]
    pub recipe: RecipeArgs,
    /// Execution.
    #[command(flatten, next_help_heading = "Execution")]
    pub run: RunArgs,
}

/// `norm-cli report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Sweep folders (or results.jsonl files) to merge.
    #[arg(required = true, value_name = "DIR")]
    pub inputs: Vec<PathBuf>,
    /// Where to write results.jsonl, recipe.json, summary and plot (default: the only input).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// `norm-cli data ...`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write the synthetic data set as CIFAR-10 binary files plus a sample grid (samples.png).
    Export(ExportArgs),
}

/// `norm-cli data export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seed of the synthetic data set.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub seed: u64,
    /// Train images.
    #[arg(long, value_name = "N", default_value_t = data::DEFAULT_TRAIN, allow_negative_numbers = true)]
    pub train_size: usize,
    /// Test images.
    #[arg(long, value_name = "M", default_value_t = data::DEFAULT_TEST, allow_negative_numbers = true)]
    pub test_size: usize,
}

/// `norm-cli apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Layer to apply.
    #[arg(long, value_parser = kernel_norms())]
    pub norm: NormKind,
    /// Groups of GroupNorm (must divide C).
    #[arg(
        long,
        value_name = "G",
        default_value_t = 32,
        allow_negative_numbers = true
    )]
    pub groups: usize,
    /// Added to the variance.
    #[arg(long, default_value_t = 1e-5, allow_negative_numbers = true)]
    pub eps: f32,
    /// Running-statistics momentum (norms with running statistics).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub momentum: f32,
    /// Input x: float32 NCHW .npy.
    #[arg(long, value_name = "X.npy")]
    pub input: PathBuf,
    /// Scale gamma ([C]; LayerNorm [C, H, W]); needs --bias.
    #[arg(long, value_name = "W.npy", requires = "bias")]
    pub weight: Option<PathBuf>,
    /// Shift beta, same shape as the weight; needs --weight.
    #[arg(long, value_name = "B.npy", requires = "weight")]
    pub bias: Option<PathBuf>,
    /// Upstream gradient dy (shape of x): also write dx (and dweight, dbias).
    #[arg(long, value_name = "DY.npy")]
    pub grad_output: Option<PathBuf>,
    /// Norms with running statistics: normalise with --running-mean/--running-var (eval mode).
    #[arg(long, requires_all = ["running_mean", "running_var"])]
    pub eval: bool,
    /// Running mean [C] (train mode: the start of the update; default 0).
    #[arg(long, value_name = "RM.npy", requires = "running_var")]
    pub running_mean: Option<PathBuf>,
    /// Running variance [C] (train mode: the start of the update; default 1).
    #[arg(long, value_name = "RV.npy", requires = "running_mean")]
    pub running_var: Option<PathBuf>,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}
