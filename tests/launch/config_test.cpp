// flame-train's config: defaults, every section, the to_toml round trip, every error class (syntax,
// unknown names, types, ranges, enum names, key combinations), --set overrides, load_config and the
// shipped configs in configs/.
#include "launch/train/config.h"

#include <unistd.h>

#include <filesystem>
#include <limits>
#include <map>

#include "support/test_support.h"

namespace flame::train {
namespace {

namespace fs = std::filesystem;
using test::raises_error;

// The smallest valid config: the one required key and a step count.
constexpr const char* kMinimal = R"(
[data]
train = "data/train"

[train]
steps = 10
)";

// A config from "section.key" -> TOML value text; data.train and train.steps get valid values
// unless given (an empty value text leaves the key out).
std::string config_text(std::map<std::string, std::string> entries) {
  entries.try_emplace("data.train", "\"data/train\"");
  entries.try_emplace("train.steps", "10");
  std::string text;
  for (const auto& [key, value] : entries) {
    if (!value.empty()) text += key + " = " + value + "\n";
  }
  return text;
}

Config parse(std::map<std::string, std::string> entries, const std::vector<std::string>& overrides = {}) {
  return parse_config(config_text(std::move(entries)), "test.toml", overrides);
}

// A config with every key away from its default.
constexpr const char* kEverything = R"(
[model]
name = "mlp_2"

[data]
train = "/datasets/fm/train"
test = "/datasets/fm/test"
workers = 5
in_memory = true
shuffle = false

[train]
batch_size = 256
grad_accum = 4
steps = 0
epochs = 7
seed = 12345
device = "cpu"
clip_grad_norm = 1.5

[optimizer]
name = "sgd"
lr = 0.25
weight_decay = 5e-4
beta1 = 0.8
beta2 = 0.99
eps = 1e-6
momentum = 0.9
nesterov = true

[schedule]
name = "step"
warmup_steps = 50
min_lr = 1e-5
step_size = 30
gamma = 0.5

[eval]
every_steps = 200
batch_size = 512

[checkpoint]
dir = "/scratch/ckpt"
every_steps = 500
keep_last = 2

[log]
dir = "runs/everything"
every_steps = 25
tensorboard = false
progress = false

[ddp]
first_bucket_mb = 2
bucket_cap_mb = 50.5
check_every = 0
timeout_s = 60
reduce_dtype = "bf16"
all_reduce = "copy_engine"
step_mean = "in_update_no_grad"
)";

Config everything() {
  Config c;
  c.model.name = "mlp_2";
  c.data = {"/datasets/fm/train", "/datasets/fm/test", 5, true, false};
  c.train = {256, 4, 0, 7, 12345, DeviceChoice::Cpu, 1.5};
  c.optimizer = {OptimizerKind::Sgd, 0.25, 5e-4, 0.8, 0.99, 1e-6, 0.9, true};
  c.schedule = {ScheduleChoice::Step, 50, 1e-5, 30, 0.5};
  c.eval = {200, 512};
  c.checkpoint = {"/scratch/ckpt", 500, 2};
  c.log = {"runs/everything", 25, false, false};
  c.ddp = {2.0, 50.5, 0, 60.0, ReduceDtype::BF16, AllReduceChoice::CopyEngine, StepMeanChoice::InUpdateNoGrad};
  return c;
}

TEST(Config, Defaults) {
  const Config c = parse_config(kMinimal, "minimal.toml");
  Config expected;
  expected.data.train_dir = "data/train";
  expected.train.steps = 10;
  expected.checkpoint.dir = "runs/default/checkpoints";
  EXPECT_EQ(c, expected);
  // The documented defaults.
  EXPECT_EQ(c.model.name, "cnn");
  EXPECT_EQ(c.data.test_dir, "");
  EXPECT_EQ(c.data.workers, 2);
  EXPECT_FALSE(c.data.in_memory);
  EXPECT_TRUE(c.data.shuffle);
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.grad_accum, 1);
  EXPECT_EQ(c.train.epochs, 0);
  EXPECT_EQ(c.train.seed, 0u);
  EXPECT_EQ(c.train.device, DeviceChoice::Auto);
  EXPECT_EQ(c.train.clip_grad_norm, 0.0);
  EXPECT_EQ(c.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_EQ(c.optimizer.lr, 1e-3);
  EXPECT_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_EQ(c.optimizer.beta1, 0.9);
  EXPECT_EQ(c.optimizer.beta2, 0.999);
  EXPECT_EQ(c.optimizer.eps, 1e-8);
  EXPECT_EQ(c.optimizer.momentum, 0.0);
  EXPECT_FALSE(c.optimizer.nesterov);
  EXPECT_EQ(c.schedule.kind, ScheduleChoice::Constant);
  EXPECT_EQ(c.schedule.step_size, 1);
  EXPECT_EQ(c.schedule.gamma, 0.1);
  EXPECT_EQ(c.eval.every_steps, 0);
  EXPECT_EQ(c.eval.batch_size, 1000);
  EXPECT_EQ(c.checkpoint.every_steps, 0);
  EXPECT_EQ(c.checkpoint.keep_last, 3);
  EXPECT_EQ(c.log.dir, "runs/default");
  EXPECT_EQ(c.log.every_steps, 10);
  EXPECT_TRUE(c.log.tensorboard);
  EXPECT_TRUE(c.log.progress);
  EXPECT_EQ(c.ddp.first_bucket_mb, 1.0);
  EXPECT_EQ(c.ddp.bucket_cap_mb, 25.0);
  EXPECT_EQ(c.ddp.check_every, 100);
  EXPECT_EQ(c.ddp.timeout_s, 300.0);
  EXPECT_EQ(c.ddp.reduce_dtype, ReduceDtype::Param);
}

TEST(Config, EverySectionParsed) { EXPECT_EQ(parse_config(kEverything, "everything.toml"), everything()); }

TEST(Config, IntegersAcceptedForFloats) {
  const Config c = parse({{"optimizer.lr", "2"}, {"ddp.timeout_s", "45"}, {"schedule.min_lr", "0"}});
  EXPECT_EQ(c.optimizer.lr, 2.0);
  EXPECT_EQ(c.ddp.timeout_s, 45.0);
}

TEST(Config, CheckpointDirFollowsLogDir) {
  EXPECT_EQ(parse({{"log.dir", "\"runs/a\""}}).checkpoint.dir, "runs/a/checkpoints");
  EXPECT_EQ(parse({{"log.dir", "\"runs/b/\""}}).checkpoint.dir, "runs/b/checkpoints");
  EXPECT_EQ(parse({{"log.dir", "\"runs/a\""}, {"checkpoint.dir", "\"elsewhere\""}}).checkpoint.dir, "elsewhere");
}

TEST(Config, EnumNames) {
  EXPECT_EQ(to_string(DeviceChoice::Auto), "auto");
  EXPECT_EQ(to_string(DeviceChoice::Cpu), "cpu");
  EXPECT_EQ(to_string(DeviceChoice::Cuda), "cuda");
  EXPECT_EQ(to_string(OptimizerKind::Sgd), "sgd");
  EXPECT_EQ(to_string(OptimizerKind::Adam), "adam");
  EXPECT_EQ(to_string(OptimizerKind::AdamW), "adamw");
  EXPECT_EQ(to_string(ScheduleChoice::Constant), "constant");
  EXPECT_EQ(to_string(ScheduleChoice::Step), "step");
  EXPECT_EQ(to_string(ScheduleChoice::WarmupCosine), "warmup_cosine");
  EXPECT_EQ(to_string(ReduceDtype::Param), "param");
  EXPECT_EQ(to_string(ReduceDtype::BF16), "bf16");
  // Every name parses back to its value.
  for (DeviceChoice d : {DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda}) {
    EXPECT_EQ(parse({}, {fmt::format("train.device={}", to_string(d))}).train.device, d);
  }
  for (OptimizerKind k : {OptimizerKind::Sgd, OptimizerKind::Adam, OptimizerKind::AdamW}) {
    EXPECT_EQ(parse({}, {fmt::format("optimizer.name={}", to_string(k))}).optimizer.kind, k);
  }
  for (ScheduleChoice k : {ScheduleChoice::Constant, ScheduleChoice::Step, ScheduleChoice::WarmupCosine}) {
    EXPECT_EQ(parse({}, {fmt::format("schedule.name={}", to_string(k))}).schedule.kind, k);
  }
  for (ReduceDtype d : {ReduceDtype::Param, ReduceDtype::BF16}) {
    EXPECT_EQ(parse({}, {fmt::format("ddp.reduce_dtype={}", to_string(d))}).ddp.reduce_dtype, d);
  }
  EXPECT_EQ(parse({{"ddp.reduce_dtype", "\"bf16\""}}).ddp.reduce_dtype, ReduceDtype::BF16);
  for (AllReduceChoice a : {AllReduceChoice::Ring, AllReduceChoice::CopyEngine}) {
    EXPECT_EQ(parse({}, {fmt::format("ddp.all_reduce={}", to_string(a))}).ddp.all_reduce, a);
  }
  EXPECT_EQ(parse({}).ddp.all_reduce, AllReduceChoice::Ring);
  for (StepMeanChoice m : {StepMeanChoice::Reduced, StepMeanChoice::InUpdate, StepMeanChoice::InUpdateNoGrad}) {
    EXPECT_EQ(parse({}, {fmt::format("ddp.step_mean={}", to_string(m))}).ddp.step_mean, m);
  }
  EXPECT_EQ(parse({}).ddp.step_mean, StepMeanChoice::Reduced);
}

// --- to_toml -------------------------------------------------------------------------------------

TEST(Config, RoundTripEveryKey) {
  // Every key of everything() differs from its default, so a key to_toml left out would not
  // compare equal.
  const Config c = everything();
  const std::string text = to_toml(c);
  EXPECT_EQ(parse_config(text, "written.toml"), c) << text;
  EXPECT_EQ(to_toml(parse_config(text, "written.toml")), text);
}

TEST(Config, RoundTripDefaults) {
  const Config c = parse_config(kMinimal, "minimal.toml");
  EXPECT_EQ(parse_config(to_toml(c), "written.toml"), c);
}

TEST(Config, RoundTripExactFloatsAndEscapedStrings) {
  Config c = parse_config(kMinimal, "minimal.toml");
  c.optimizer.lr = 0.1 + 0.2;  // 0.30000000000000004
  c.optimizer.eps = 1e-300;
  c.optimizer.beta2 = 1.0 - 1e-16;
  c.ddp.bucket_cap_mb = 1048575.75;
  c.ddp.timeout_s = 25.0;  // written "25.0", a TOML float
  c.ddp.reduce_dtype = ReduceDtype::BF16;
  c.train.seed = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  c.data.test_dir = "dir with \"quotes\", a \\ backslash,\ta tab and \x01";
  c.log.dir = "runs/ünïcode";
  const std::string text = to_toml(c);
  EXPECT_NE(text.find("timeout_s = 25.0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("reduce_dtype = \"bf16\"\n"), std::string::npos) << text;
  EXPECT_EQ(parse_config(text, "written.toml"), c) << text;
}

// --- errors --------------------------------------------------------------------------------------

TEST(ConfigErrors, SyntaxErrorNamesSourceAndLine) {
  EXPECT_TRUE(raises_error([] { parse_config("[data]\ntrain = \"d\"\n[train\nsteps = 1\n", "broken.toml"); },
                           {"broken.toml:3:", "TOML syntax error", "expected ']'"}));
  EXPECT_TRUE(raises_error([] { parse_config("[data]\ntrain = \"d\ntrain.steps = 1\n", "unterminated.toml"); },
                           {"unterminated.toml:2:", "TOML syntax error"}));
}

TEST(ConfigErrors, UnknownKeySuggestsNearest) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"optimizer.lrr", "0.1"}});
      },
      {"test.toml:2:", "unknown key 'optimizer.lrr'", "did you mean 'optimizer.lr'?",
       "known keys of [optimizer]: name, lr, weight_decay, beta1, beta2, eps, momentum, nesterov"}));
  EXPECT_TRUE(raises_error([] { parse({{"train.batchsize", "3"}}); }, {"did you mean 'train.batch_size'?"}));
}

TEST(ConfigErrors, UnknownKeyWithoutNearOneListsKnownKeys) {
  EXPECT_TRUE(raises_error(
      [] {
        try {
          parse({{"optimizer.learning_rate", "0.1"}});
        } catch (const Error& error) {
          EXPECT_EQ(std::string(error.what()).find("did you mean"), std::string::npos) << error.what();
          throw;
        }
      },
      {"unknown key 'optimizer.learning_rate'", "known keys of [optimizer]: name, lr,"}));
}

TEST(ConfigErrors, KeyInTheWrongSectionNamesItsSection) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"train.lr", "0.1"}});
      },
      {"unknown key 'train.lr'", "did you mean 'optimizer.lr'?", "known keys of [train]:"}));
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"train.name", "\"x\""}});
      },
      {"did you mean 'model.name', 'optimizer.name' or 'schedule.name'?"}));
}

TEST(ConfigErrors, UnknownSection) {
  EXPECT_TRUE(raises_error([] { parse_config(std::string(kMinimal) + "[optimiser]\nlr = 0.1\n", "s.toml"); },
                           {"s.toml:7:", "unknown section [optimiser]", "did you mean 'optimizer'?",
                            "known sections: model, data, train, optimizer, schedule, eval, checkpoint, log, ddp"}));
  EXPECT_TRUE(raises_error([] { parse_config(std::string(kMinimal) + "[zzz]\n", "s.toml"); },
                           {"unknown section [zzz]", "known sections: model, data,"}));
}

TEST(ConfigErrors, KeyOutsideAnySection) {
  EXPECT_TRUE(raises_error(
      [] { parse_config(std::string("lr = 0.1\n") + kMinimal, "s.toml"); },
      {"s.toml:1:", "unknown key 'lr' outside any section", "did you mean 'optimizer.lr'?", "model, data, train"}));
}

TEST(ConfigErrors, SectionMustBeATable) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"data.train", ""}, {"train.steps", ""}, {"train", "3"}});
      },
      {"train must be a table", "[train]", "got an integer 3"}));
}

TEST(ConfigErrors, WrongTypes) {
  struct Case {
    std::string key, value, fragment;
  };
  const std::vector<Case> cases = {
      {"train.batch_size", "\"64\"", "train.batch_size must be an integer in 1..1048576, got a string \"64\""},
      {"train.batch_size", "64.0", "train.batch_size must be an integer in 1..1048576, got a float 64.0"},
      {"train.seed", "1.5", "train.seed must be an integer >= 0, got a float 1.5"},
      {"data.workers", "true", "data.workers must be an integer in 1..64, got a boolean true"},
      {"optimizer.lr", "\"fast\"", "optimizer.lr must be a finite number > 0, got a string \"fast\""},
      {"optimizer.lr", "[0.1]", "optimizer.lr must be a finite number > 0, got an array"},
      {"data.shuffle", "1", "data.shuffle must be a boolean (true or false), got an integer 1"},
      {"data.shuffle", "\"yes\"", "data.shuffle must be a boolean (true or false), got a string \"yes\""},
      {"data.test", "5", "data.test must be a string, got an integer 5"},
      {"log.dir", "{ a = 1 }", "log.dir must be a non-empty string, got a table"},
      {"train.device", "0", "train.device must be one of \"auto\", \"cpu\", \"cuda\", got an integer 0"},
      {"schedule.name", "1979-05-27", "schedule.name must be one of"},
      {"ddp.reduce_dtype", "16", "ddp.reduce_dtype must be one of \"param\", \"bf16\", got an integer 16"},
      {"ddp.all_reduce", "\"nvls\"", "ddp.all_reduce must be one of \"ring\", \"copy_engine\", got a string \"nvls\""},
      {"ddp.step_mean", "\"fused\"",
       "ddp.step_mean must be one of \"reduced\", \"in_update\", \"in_update_no_grad\", got a string \"fused\""},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key + " = " + c.value);
    EXPECT_TRUE(raises_error([&] { parse({{c.key, c.value}}); }, {"test.toml:", c.fragment}));
  }
}

TEST(ConfigErrors, OutOfRange) {
  struct Case {
    std::string key, value, allowed;
  };
  const std::vector<Case> cases = {
      {"model.name", "\"CNN\"", "a non-empty name of lowercase letters, digits and '_'"},
      {"model.name", "\"\"", "a non-empty name of lowercase letters, digits and '_'"},
      {"model.name", "\"res-net\"", "a non-empty name of lowercase letters, digits and '_'"},
      {"data.train", "\"\"", "a non-empty string"},
      {"data.workers", "0", "an integer in 1..64"},
      {"data.workers", "65", "an integer in 1..64"},
      {"train.batch_size", "0", "an integer in 1..1048576"},
      {"train.batch_size", "1048577", "an integer in 1..1048576"},
      {"train.grad_accum", "0", "an integer in 1..4096"},
      {"train.grad_accum", "4097", "an integer in 1..4096"},
      {"train.steps", "-1", "an integer >= 0"},
      {"train.epochs", "-2", "an integer >= 0"},
      {"train.seed", "-1", "an integer >= 0"},
      {"train.clip_grad_norm", "-0.5", "a finite number >= 0"},
      {"train.clip_grad_norm", "inf", "a finite number >= 0"},
      {"optimizer.lr", "0", "a finite number > 0"},
      {"optimizer.lr", "-1e-3", "a finite number > 0"},
      {"optimizer.lr", "nan", "a finite number > 0"},
      {"optimizer.weight_decay", "-0.01", "a finite number >= 0"},
      {"optimizer.beta1", "1.0", "a finite number in [0, 1)"},
      {"optimizer.beta1", "-0.1", "a finite number in [0, 1)"},
      {"optimizer.beta2", "1", "a finite number in [0, 1)"},
      {"optimizer.eps", "0.0", "a finite number > 0"},
      {"optimizer.momentum", "1.0", "a finite number in [0, 1)"},
      {"schedule.warmup_steps", "-1", "an integer >= 0"},
      {"schedule.min_lr", "-1e-9", "a finite number >= 0"},
      {"schedule.step_size", "0", "an integer >= 1"},
      {"schedule.gamma", "-0.1", "a finite number >= 0"},
      {"eval.every_steps", "-1", "an integer >= 0"},
      {"eval.batch_size", "0", "an integer in 1..1048576"},
      {"checkpoint.every_steps", "-5", "an integer >= 0"},
      {"checkpoint.keep_last", "0", "an integer >= 1"},
      {"log.dir", "\"\"", "a non-empty string"},
      {"log.every_steps", "0", "an integer >= 1"},
      {"ddp.first_bucket_mb", "0", "a finite number in [0.001, 1048576]"},
      {"ddp.bucket_cap_mb", "-25", "a finite number in [0.001, 1048576]"},
      {"ddp.bucket_cap_mb", "1e-7", "a finite number in [0.001, 1048576]"},
      {"ddp.first_bucket_mb", "1e300", "a finite number in [0.001, 1048576]"},
      {"ddp.check_every", "-1", "an integer >= 0"},
      {"ddp.timeout_s", "0", "a finite number in [0.001, 1000000000]"},
      {"ddp.timeout_s", "0.0001", "a finite number in [0.001, 1000000000]"},
      {"ddp.timeout_s", "1e17", "a finite number in [0.001, 1000000000]"},
      {"ddp.timeout_s", "-inf", "a finite number in [0.001, 1000000000]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key + " = " + c.value);
    EXPECT_TRUE(raises_error([&] { parse({{c.key, c.value}}); }, {"test.toml:", c.key + " must be " + c.allowed}));
  }
}

TEST(ConfigErrors, UnknownEnumNamesListTheAllowedOnes) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"train.device", "\"gpu\""}});
      },
      {"train.device must be one of \"auto\", \"cpu\", \"cuda\", got a string \"gpu\""}));
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"optimizer.name", "\"adagrad\""}});
      },
      {"optimizer.name must be one of \"sgd\", \"adam\", \"adamw\", got a string \"adagrad\""}));
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"schedule.name", "\"cosine\""}});
      },
      {"schedule.name must be one of \"constant\", \"step\", \"warmup_cosine\", got a string \"cosine\""}));
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"ddp.reduce_dtype", "\"fp8\""}});
      },
      {"ddp.reduce_dtype must be one of \"param\", \"bf16\", got a string \"fp8\""}));
  EXPECT_TRUE(raises_error([] { parse({}, {"ddp.reduce_dtype=BF16"}); },
                           {"--set 'ddp.reduce_dtype=BF16'", "ddp.reduce_dtype must be one of"}));
  EXPECT_TRUE(raises_error([] { parse({{"optimizer.name", "\"AdamW\""}}); }, {"optimizer.name must be one of"}));
}

TEST(ConfigErrors, MissingTrainDirectory) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"data.train", ""}});
      },
      {"test.toml: data.train is missing", "required", "--set data.train="}));
}

TEST(ConfigErrors, ExactlyOneOfStepsAndEpochs) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"train.steps", "0"}});
      },
      {"exactly one of train.steps and train.epochs must be > 0",
       "train.steps = 0 (test.toml:2:", "train.epochs = 0 (default)"}));
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"train.epochs", "3"}});
      },
      {"exactly one of train.steps and train.epochs", "train.steps = 10", "train.epochs = 3"}));
  EXPECT_EQ(parse({{"train.steps", "0"}, {"train.epochs", "3"}}).train.epochs, 3);
}

TEST(ConfigErrors, MinLrAboveLr) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"schedule.min_lr", "0.01"}});
      },
      {"schedule.min_lr must be in [0, optimizer.lr]", "schedule.min_lr = 0.01", "optimizer.lr = 0.001 (default)"}));
  EXPECT_EQ(parse({{"schedule.min_lr", "0.001"}}).schedule.min_lr, 1e-3);  // equal is allowed
}

TEST(ConfigErrors, NesterovNeedsMomentum) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"optimizer.name", "\"sgd\""}, {"optimizer.nesterov", "true"}});
      },
      {"optimizer.nesterov = true requires optimizer.momentum in (0, 1)", "optimizer.momentum = 0 (default)"}));
  EXPECT_TRUE(parse({{"optimizer.name", "\"sgd\""}, {"optimizer.nesterov", "true"}, {"optimizer.momentum", "0.9"}})
                  .optimizer.nesterov);
}

TEST(ConfigErrors, WarmupLongerThanTraining) {
  EXPECT_TRUE(raises_error(
      [] {
        parse({{"schedule.name", "\"warmup_cosine\""}, {"schedule.warmup_steps", "11"}});
      },
      {"schedule.warmup_steps must be in 0..train.steps for warmup_cosine", "schedule.warmup_steps = 11",
       "train.steps = 10"}));
  // Equal is allowed; other schedules ignore warmup_steps; with epochs the trainer checks it.
  EXPECT_EQ(parse({{"schedule.name", "\"warmup_cosine\""}, {"schedule.warmup_steps", "10"}}).schedule.warmup_steps, 10);
  EXPECT_EQ(parse({{"schedule.warmup_steps", "11"}}).schedule.kind, ScheduleChoice::Constant);
  EXPECT_EQ(parse({{"train.steps", "0"},
                   {"train.epochs", "1"},
                   {"schedule.name", "\"warmup_cosine\""},
                   {"schedule.warmup_steps", "100000"}})
                .schedule.warmup_steps,
            100000);
}

// --- overrides -----------------------------------------------------------------------------------

TEST(ConfigOverrides, ValuesOfEveryType) {
  const Config c = parse({}, {"optimizer.lr=3e-4", "train.batch_size=128", "data.shuffle=false", "train.device=cpu",
                              "data.test=data/fashion-mnist/test", "model.name=\"mlp\"", "ddp.timeout_s=30",
                              " optimizer.weight_decay = 0.05 "});
  EXPECT_EQ(c.optimizer.lr, 3e-4);
  EXPECT_EQ(c.train.batch_size, 128);
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.train.device, DeviceChoice::Cpu);
  EXPECT_EQ(c.data.test_dir, "data/fashion-mnist/test");
  EXPECT_EQ(c.model.name, "mlp");
  EXPECT_EQ(c.ddp.timeout_s, 30.0);
  EXPECT_EQ(c.optimizer.weight_decay, 0.05);
}

TEST(ConfigOverrides, ReplaceFileValuesAndLaterOnesWin) {
  const Config c = parse({{"train.batch_size", "32"}}, {"train.batch_size=100", "train.batch_size=200"});
  EXPECT_EQ(c.train.batch_size, 200);
}

TEST(ConfigOverrides, CanSupplyMissingKeysAndSections) {
  const Config c = parse_config("", "empty.toml", {"data.train=d", "train.epochs=1", "ddp.check_every=7"});
  EXPECT_EQ(c.data.train_dir, "d");
  EXPECT_EQ(c.train.epochs, 1);
  EXPECT_EQ(c.ddp.check_every, 7);
  // An empty value is the empty string: this turns evaluation off.
  EXPECT_EQ(parse({{"data.test", "\"t\""}}, {"data.test="}).data.test_dir, "");
  // Text with a newline is not one TOML value, so it is a string as written.
  EXPECT_EQ(parse({}, {"log.dir=a\nb = 1"}).log.dir, "a\nb = 1");
}

TEST(ConfigOverrides, Malformed) {
  EXPECT_TRUE(
      raises_error([] { parse({}, {"optimizer.lr"}); }, {"--set 'optimizer.lr'", "section.key=value", "no '='"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"=3"}); }, {"--set '=3'", "key before '=' is empty"}));
}

TEST(ConfigOverrides, UnknownKeys) {
  EXPECT_TRUE(raises_error([] { parse({}, {"optimizer.learning_rate=3e-4"}); },
                           {"--set 'optimizer.learning_rate=3e-4'", "unknown key 'optimizer.learning_rate'",
                            "known keys of [optimizer]: name, lr,"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"optimizer.lrr=1"}); }, {"did you mean 'optimizer.lr'?"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"optimiser.lr=1"}); },
                           {"--set 'optimiser.lr=1'", "unknown section [optimiser]", "did you mean 'optimizer'?"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"lr=1"}); },
                           {"--set 'lr=1'", "unknown key 'lr' outside any section", "did you mean 'optimizer.lr'?"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"optimizer.lr.x=1"}); }, {"unknown key 'optimizer.lr.x'"}));
}

TEST(ConfigOverrides, WrongTypesNameTheOverride) {
  EXPECT_TRUE(raises_error(
      [] { parse({}, {"train.batch_size=abc"}); },
      {"--set 'train.batch_size=abc'", "train.batch_size must be an integer in 1..1048576", "got a string \"abc\""}));
  EXPECT_TRUE(raises_error([] { parse({}, {"train.steps=1e3"}); },
                           {"--set 'train.steps=1e3'", "train.steps must be an integer >= 0", "got a float 1000.0"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"data.in_memory=yes"}); },
                           {"--set 'data.in_memory=yes'", "data.in_memory must be a boolean"}));
  EXPECT_TRUE(raises_error([] { parse({}, {"optimizer.lr=-1"}); },
                           {"--set 'optimizer.lr=-1'", "optimizer.lr must be a finite number > 0, got an integer -1"}));
  // A number where a string is expected: the message says how to quote it.
  EXPECT_TRUE(raises_error([] { parse({}, {"log.dir=2024"}); },
                           {"--set 'log.dir=2024'", "log.dir must be a non-empty string, got an integer 2024",
                            "quote it: --set 'log.dir=\"...\"'"}));
  EXPECT_EQ(parse({}, {"log.dir=\"2024\""}).log.dir, "2024");
}

TEST(ConfigOverrides, KeyCombinationErrorsNameTheOverride) {
  EXPECT_TRUE(raises_error([] { parse({}, {"train.epochs=2"}); },
                           {"exactly one of train.steps and train.epochs",
                            "train.steps = 10 (test.toml:", "train.epochs = 2 (--set 'train.epochs=2')"}));
  EXPECT_EQ(parse({}, {"train.epochs=2", "train.steps=0"}).train.epochs, 2);
}

// --- files ---------------------------------------------------------------------------------------

/// A fresh directory for one test, removed with everything in it at the end.
class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("flame_config_test_{}", getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string path = (dir_ / name).string();
    test::write_file(path, text);
    return path;
  }
  fs::path dir_;
};

TEST_F(ConfigFiles, LoadsAFileAndNamesItInErrors) {
  const std::string path = write("run.toml", kMinimal);
  EXPECT_EQ(load_config(path, {"train.batch_size=7"}).train.batch_size, 7);
  const std::string bad = write("bad.toml", std::string(kMinimal) + "[train2]\n");
  EXPECT_TRUE(raises_error([&] { load_config(bad); }, {bad + ":7:", "unknown section [train2]"}));
}

TEST_F(ConfigFiles, MissingFileOrDirectory) {
  const std::string missing = (dir_ / "nope.toml").string();
  EXPECT_TRUE(raises_error([&] { load_config(missing); },
                           {"cannot open config file '" + missing + "'", "No such file or directory"}));
  EXPECT_TRUE(raises_error([&] { load_config(dir_.string()); }, {dir_.string(), "is a directory"}));
}

TEST(ShippedConfigs, FashionMnistCnn) {
  const Config c = load_config(std::string(FLAME_SOURCE_DIR) + "/configs/fashion_mnist_cnn.toml");
  EXPECT_EQ(c.model.name, "cnn");
  EXPECT_EQ(c.data.train_dir, "data/fashion-mnist/train");
  EXPECT_EQ(c.data.test_dir, "data/fashion-mnist/test");
  EXPECT_EQ(c.train.batch_size, 128);
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_EQ(c.train.steps, 0);
  EXPECT_EQ(c.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_EQ(c.optimizer.lr, 2e-3);
  EXPECT_EQ(c.optimizer.weight_decay, 0.01);
  EXPECT_EQ(c.schedule.kind, ScheduleChoice::WarmupCosine);
  EXPECT_EQ(c.schedule.warmup_steps, 100);
  EXPECT_EQ(c.eval.every_steps, 200);
  EXPECT_EQ(c.checkpoint.every_steps, 500);
  EXPECT_EQ(c.checkpoint.keep_last, 3);
  EXPECT_EQ(c.log.dir, "runs/fashion_mnist_cnn");
  EXPECT_EQ(c.checkpoint.dir, "runs/fashion_mnist_cnn/checkpoints");
  EXPECT_EQ(parse_config(to_toml(c), "written.toml"), c);
}

TEST(ShippedConfigs, FashionMnistMlp) {
  const Config c = load_config(std::string(FLAME_SOURCE_DIR) + "/configs/fashion_mnist_mlp.toml");
  EXPECT_EQ(c.model.name, "mlp");
  EXPECT_EQ(c.data.train_dir, "data/fashion-mnist/train");
  EXPECT_EQ(c.data.test_dir, "data/fashion-mnist/test");
  EXPECT_EQ(c.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_EQ(c.optimizer.lr, 1e-3);
  EXPECT_EQ(c.schedule.kind, ScheduleChoice::WarmupCosine);
  EXPECT_EQ(c.log.dir, "runs/fashion_mnist_mlp");
  EXPECT_EQ(parse_config(to_toml(c), "written.toml"), c);
}

TEST(ShippedConfigs, AcceptOverridesForADebugRun) {
  const Config c = load_config(std::string(FLAME_SOURCE_DIR) + "/configs/fashion_mnist_cnn.toml",
                               {"train.device=cpu", "train.epochs=0", "train.steps=50", "schedule.warmup_steps=10"});
  EXPECT_EQ(c.train.device, DeviceChoice::Cpu);
  EXPECT_EQ(c.train.steps, 50);
  EXPECT_EQ(c.schedule.warmup_steps, 10);
}

}  // namespace
}  // namespace flame::train
