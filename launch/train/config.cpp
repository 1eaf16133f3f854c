// flame-train's configuration: the key schema, its reader (TOML file + --set overrides) and writer.
#include "launch/train/config.h"

#include <fmt/format.h>
#include <toml++/toml.h>  // toml++ 3.3 names its header toml.h; later versions keep it beside toml.hpp

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <type_traits>

#include "core/error.h"

namespace flame::train {
namespace {

// --- names of the enum values -------------------------------------------------------------------

template <class E>
struct EnumName {
  E value;
  std::string_view name;
};

constexpr std::array<EnumName<DeviceChoice>, 3> kDeviceNames{
    {{DeviceChoice::Auto, "auto"}, {DeviceChoice::Cpu, "cpu"}, {DeviceChoice::Cuda, "cuda"}}};
constexpr std::array<EnumName<OptimizerKind>, 3> kOptimizerNames{
    {{OptimizerKind::Sgd, "sgd"}, {OptimizerKind::Adam, "adam"}, {OptimizerKind::AdamW, "adamw"}}};
constexpr std::array<EnumName<ScheduleChoice>, 3> kScheduleNames{{{ScheduleChoice::Constant, "constant"},
                                                                  {ScheduleChoice::Step, "step"},
                                                                  {ScheduleChoice::WarmupCosine, "warmup_cosine"}}};
constexpr std::array<EnumName<ReduceDtype>, 2> kReduceDtypeNames{
    {{ReduceDtype::Param, "param"}, {ReduceDtype::BF16, "bf16"}}};
constexpr std::array<EnumName<AllReduceChoice>, 2> kAllReduceNames{
    {{AllReduceChoice::Ring, "ring"}, {AllReduceChoice::CopyEngine, "copy_engine"}}};
constexpr std::array<EnumName<StepMeanChoice>, 3> kStepMeanNames{{{StepMeanChoice::Reduced, "reduced"},
                                                                  {StepMeanChoice::InUpdate, "in_update"},
                                                                  {StepMeanChoice::InUpdateNoGrad,
                                                                   "in_update_no_grad"}}};

constexpr const auto& names_of(DeviceChoice) { return kDeviceNames; }
constexpr const auto& names_of(OptimizerKind) { return kOptimizerNames; }
constexpr const auto& names_of(ScheduleChoice) { return kScheduleNames; }
constexpr const auto& names_of(ReduceDtype) { return kReduceDtypeNames; }
constexpr const auto& names_of(AllReduceChoice) { return kAllReduceNames; }
constexpr const auto& names_of(StepMeanChoice) { return kStepMeanNames; }

template <class E>
std::string_view name_of(E value) {
  for (const auto& entry : names_of(E{})) {
    if (entry.value == value) return entry.name;
  }
  FLAME_FAIL("config: enum value {} has no name", static_cast<int>(value));
}

// "\"auto\", \"cpu\", \"cuda\"": the allowed names, as an error message lists them.
template <class E>
std::string quoted_names() {
  std::string out;
  for (const auto& entry : names_of(E{})) out += fmt::format("{}\"{}\"", out.empty() ? "" : ", ", entry.name);
  return out;
}

// --- what a key allows ---------------------------------------------------------------------------

constexpr int64_t kMaxBatch = 1048576;
constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

// An inclusive integer range.
struct IntRange {
  int64_t min = 0;
  int64_t max = kMaxInt;
  bool contains(int64_t value) const { return value >= min && value <= max; }
  std::string describe() const {
    return max == kMaxInt ? fmt::format("an integer >= {}", min) : fmt::format("an integer in {}..{}", min, max);
  }
};

enum class Bound { Closed, Open };

// A range of finite numbers from `low`, up to `high` (no upper bound when high is infinite).
struct FloatRange {
  double low = 0.0;
  Bound low_bound = Bound::Closed;
  double high = std::numeric_limits<double>::infinity();
  Bound high_bound = Bound::Open;

  bool contains(double value) const {
    if (!std::isfinite(value)) return false;
    if (low_bound == Bound::Closed ? value < low : value <= low) return false;
    return high_bound == Bound::Closed ? value <= high : value < high;
  }
  std::string describe() const {
    if (std::isinf(high)) return fmt::format("a finite number {} {}", low_bound == Bound::Closed ? ">=" : ">", low);
    return fmt::format("a finite number in {}{}, {}{}", low_bound == Bound::Closed ? '[' : '(', low, high,
                       high_bound == Bound::Closed ? ']' : ')');
  }
};

constexpr FloatRange kPositive{0.0, Bound::Open};
constexpr FloatRange kNonNegative{0.0, Bound::Closed};
constexpr FloatRange kUnitInterval{0.0, Bound::Closed, 1.0, Bound::Open};         // [0, 1)
constexpr FloatRange kBucketMiB{0.001, Bound::Closed, 1048576.0, Bound::Closed};  // about 1 KB .. 1 TiB

// What a string key accepts.
enum class TextRule {
  Any,       // any string, "" included
  NonEmpty,  // a non-empty string (the key has a default)
  Required,  // a non-empty string that must be given (the key has no default)
  Name,      // a non-empty string of [a-z0-9_]
};

std::string describe(TextRule rule) {
  switch (rule) {
    case TextRule::Any:
      return "a string";
    case TextRule::NonEmpty:
    case TextRule::Required:
      return "a non-empty string";
    case TextRule::Name:
      return "a non-empty name of lowercase letters, digits and '_'";
  }
  return "a string";
}

bool allows(TextRule rule, const std::string& text) {
  if (rule == TextRule::Any) return true;
  if (text.empty()) return false;
  if (rule != TextRule::Name) return true;
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

// Note [config schema]
// visit_keys() is the one list of the config's sections and keys, in the order of docs/config.md.
// The unknown-key check, the reader and the writer all walk it, so a key added here is at once
// parsed, validated, written by to_toml and listed in "known keys" messages. A visitor provides
// section(name) and key(name, member[, rule]) for each member type.
template <class Visitor, class C>
void visit_keys(Visitor& v, C& c) {
  v.section("model");
  v.key("name", c.model.name, TextRule::Name);
  v.section("data");
  v.key("train", c.data.train_dir, TextRule::Required);
  v.key("test", c.data.test_dir, TextRule::Any);
  v.key("workers", c.data.workers, IntRange{1, 64});
  v.key("in_memory", c.data.in_memory);
  v.key("shuffle", c.data.shuffle);
  v.key("verify_checksums", c.data.verify_checksums);
  v.section("train");
  v.key("batch_size", c.train.batch_size, IntRange{1, kMaxBatch});
  v.key("grad_accum", c.train.grad_accum, IntRange{1, 4096});
  v.key("steps", c.train.steps, IntRange{0});
  v.key("epochs", c.train.epochs, IntRange{0});
  v.key("seed", c.train.seed, IntRange{0});
  v.key("device", c.train.device);
  v.key("clip_grad_norm", c.train.clip_grad_norm, kNonNegative);
  v.section("optimizer");
  v.key("name", c.optimizer.kind);
  v.key("lr", c.optimizer.lr, kPositive);
  v.key("weight_decay", c.optimizer.weight_decay, kNonNegative);
  v.key("beta1", c.optimizer.beta1, kUnitInterval);
  v.key("beta2", c.optimizer.beta2, kUnitInterval);
  v.key("eps", c.optimizer.eps, kPositive);
  v.key("momentum", c.optimizer.momentum, kUnitInterval);
  v.key("nesterov", c.optimizer.nesterov);
  v.section("schedule");
  v.key("name", c.schedule.kind);
  v.key("warmup_steps", c.schedule.warmup_steps, IntRange{0});
  v.key("min_lr", c.schedule.min_lr, kNonNegative);
  v.key("step_size", c.schedule.step_size, IntRange{1});
  v.key("gamma", c.schedule.gamma, kNonNegative);
  v.section("eval");
  v.key("every_steps", c.eval.every_steps, IntRange{0});
  v.key("batch_size", c.eval.batch_size, IntRange{1, kMaxBatch});
  v.section("checkpoint");
  v.key("dir", c.checkpoint.dir, TextRule::Any);
  v.key("every_steps", c.checkpoint.every_steps, IntRange{0});
  v.key("keep_last", c.checkpoint.keep_last, IntRange{1});
  v.section("log");
  v.key("dir", c.log.dir, TextRule::NonEmpty);
  v.key("every_steps", c.log.every_steps, IntRange{1});
  v.key("tensorboard", c.log.tensorboard);
  v.key("progress", c.log.progress);
  v.section("ddp");
  // From about 1 KB to 1 TiB: a much smaller cap rounds to no bytes, a much larger one overflows the byte count.
  v.key("first_bucket_mb", c.ddp.first_bucket_mb, kBucketMiB);
  v.key("bucket_cap_mb", c.ddp.bucket_cap_mb, kBucketMiB);
  v.key("check_every", c.ddp.check_every, IntRange{0});
  // At least a millisecond (the communicators count whole milliseconds), at most about 31 years.
  v.key("timeout_s", c.ddp.timeout_s, FloatRange{0.001, Bound::Closed, 1e9, Bound::Closed});
  v.key("reduce_dtype", c.ddp.reduce_dtype);
  v.key("all_reduce", c.ddp.all_reduce);
  v.key("step_mean", c.ddp.step_mean);
}

// --- the known sections and keys -------------------------------------------------------------------

struct SectionKeys {
  std::string_view name;
  std::vector<std::string_view> keys;
  bool has(std::string_view key) const { return std::find(keys.begin(), keys.end(), key) != keys.end(); }
};

// Collects the schema's names (a visitor of visit_keys).
class KeyLister {
 public:
  void section(std::string_view name) { sections_.push_back({name, {}}); }
  template <class T, class... Rule>
  void key(std::string_view name, const T&, const Rule&...) {
    sections_.back().keys.push_back(name);
  }
  std::vector<SectionKeys> sections_;
};

const std::vector<SectionKeys>& schema() {
  static const std::vector<SectionKeys> sections = [] {
    KeyLister lister;
    const Config defaults;
    visit_keys(lister, defaults);
    return lister.sections_;
  }();
  return sections;
}

const SectionKeys* find_section(std::string_view name) {
  for (const SectionKeys& section : schema()) {
    if (section.name == name) return &section;
  }
  return nullptr;
}

template <class Names>
std::string join_names(const Names& names) {
  std::string out;
  for (std::string_view name : names) out += fmt::format("{}{}", out.empty() ? "" : ", ", name);
  return out;
}

std::string section_names() {
  std::vector<std::string_view> names;
  for (const SectionKeys& section : schema()) names.push_back(section.name);
  return join_names(names);
}

// Levenshtein distance (insertions, deletions and substitutions).
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// A suggestion is offered when the unknown name is within this many edits of a known one.
constexpr size_t kSuggestDistance = 2;

// " (did you mean 'x'?)" for the candidate nearest to `name`, or "" when none is near.
std::string suggestion(std::string_view name, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  size_t best_distance = kSuggestDistance + 1;
  for (const std::string& candidate : candidates) {
    const size_t distance = edit_distance(name, candidate);
    if (distance < best_distance) {
      best = &candidate;
      best_distance = distance;
    }
  }
  return best ? fmt::format(" (did you mean '{}'?)", *best) : "";
}

// "'model.name', 'optimizer.name' or 'schedule.name'": the sections that have `key`, or "".
std::string sections_with(std::string_view key) {
  std::vector<std::string> owners;
  for (const SectionKeys& section : schema()) {
    if (section.has(key)) owners.push_back(fmt::format("'{}.{}'", section.name, key));
  }
  std::string out;
  for (size_t i = 0; i < owners.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == owners.size() ? " or " : ", ") + owners[i];
  }
  return out;
}

// The errors for names the schema does not know; `where` says where the name was written.

// `key` in the known `section` ("[optimizer] lrr = ...").
[[noreturn]] void fail_unknown_key(std::string_view section, std::string_view key, const std::string& where) {
  const SectionKeys& known = *find_section(section);
  std::vector<std::string> same_section;
  for (std::string_view k : known.keys) same_section.push_back(fmt::format("{}.{}", section, k));
  std::string hint = suggestion(fmt::format("{}.{}", section, key), same_section);
  if (hint.empty()) {
    // The key may belong to other sections ("[train] lr = ...").
    const std::string owners = sections_with(key);
    if (!owners.empty()) hint = fmt::format(" (did you mean {}?)", owners);
  }
  FLAME_FAIL("{}: unknown key '{}.{}'{}; known keys of [{}]: {}", where, section, key, hint, section,
             join_names(known.keys));
}

// A table that is not a section ("[optimiser]").
[[noreturn]] void fail_unknown_section(std::string_view name, const std::string& where) {
  std::vector<std::string> sections;
  for (const SectionKeys& section : schema()) sections.emplace_back(section.name);
  FLAME_FAIL("{}: unknown section [{}]{}; known sections: {}", where, name, suggestion(name, sections),
             section_names());
}

// A key outside any section ("lr = 0.1" before the first [section]).
[[noreturn]] void fail_top_level_key(std::string_view key, const std::string& where) {
  const std::string owners = sections_with(key);
  FLAME_FAIL("{}: unknown key '{}' outside any section{}; keys belong to the sections {}", where, key,
             owners.empty() ? "" : fmt::format(" (did you mean {}?)", owners), section_names());
}

// The shortest text that reads back as the same double, with a '.' or exponent so that it is a
// TOML float ("25.0", "0.001", "1e-08").
std::string float_text(double value) {
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".eEin") == std::string::npos) text += ".0";
  return text;
}

// "a string \"64\"", "a float 64.5", "an array": what a node holds, for type errors.
std::string describe_node(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string:
      return fmt::format("a string \"{}\"", node.as_string()->get());
    case toml::node_type::integer:
      return fmt::format("an integer {}", node.as_integer()->get());
    case toml::node_type::floating_point:
      return "a float " + float_text(node.as_floating_point()->get());
    case toml::node_type::boolean:
      return fmt::format("a boolean {}", node.as_boolean()->get());
    case toml::node_type::array:
      return "an array";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// "name.toml:12:5"
std::string location(std::string_view source, const toml::source_region& region) {
  if (region.begin.line == 0) return std::string(source);
  return fmt::format("{}:{}:{}", source, region.begin.line, region.begin.column);
}

// Raises for an unknown section or key, or a section that is not a table, in the parsed file.
void check_names(const toml::table& root, std::string_view source) {
  for (auto&& [name, node] : root) {
    const SectionKeys* section = find_section(name.str());
    if (section == nullptr && node.is_table()) fail_unknown_section(name.str(), location(source, name.source()));
    if (section == nullptr) fail_top_level_key(name.str(), location(source, name.source()));
    FLAME_CHECK(node.is_table(), "{}: {} must be a table (a [{}] section), got {}", location(source, name.source()),
                name.str(), name.str(), describe_node(node));
    for (auto&& [key, value] : *node.as_table()) {
      if (!section->has(key.str())) fail_unknown_key(section->name, key.str(), location(source, key.source()));
    }
  }
}

// --- where values come from ----------------------------------------------------------------------

// The merged table (file, then overrides) and the origin of each value, for error messages.
class Origins {
 public:
  Origins(const toml::table& root, std::string_view source) : root_(root), source_(source) {}

  const std::string& source() const { return source_; }
  void set_override(const std::string& dotted, const std::string& text) { overrides_[dotted] = text; }
  bool from_override(std::string_view dotted) const { return overrides_.find(dotted) != overrides_.end(); }

  const toml::node* find(std::string_view section, std::string_view key) const {
    const toml::table* table = root_.get_as<toml::table>(section);
    return table == nullptr ? nullptr : table->get(key);
  }

  // "--set 'optimizer.lr=1'", "name.toml:12:5", or "name.toml" for a key left at its default.
  std::string where(std::string_view section, std::string_view key) const {
    const std::string dotted = fmt::format("{}.{}", section, key);
    if (auto it = overrides_.find(dotted); it != overrides_.end()) return fmt::format("--set '{}'", it->second);
    const toml::node* node = find(section, key);
    return node == nullptr ? source_ : location(source_, node->source());
  }

  // "train.steps = 0 (default)", for the errors of rules that involve several keys.
  template <class T>
  std::string show(std::string_view section, std::string_view key, const T& value) const {
    const bool given = find(section, key) != nullptr;
    return fmt::format("{}.{} = {} ({})", section, key, value, given ? where(section, key) : "default");
  }

 private:
  const toml::table& root_;
  std::string source_;
  std::map<std::string, std::string, std::less<>> overrides_;
};

std::string trim(std::string_view text) {
  const size_t begin = text.find_first_not_of(" \t");
  if (begin == std::string_view::npos) return "";
  const size_t end = text.find_last_not_of(" \t");
  return std::string(text.substr(begin, end - begin + 1));
}

// Applies one "section.key=value" override to the merged table (Note [override values]).
void apply_override(toml::table& root, const std::string& text, Origins& origins) {
  const std::string where = fmt::format("--set '{}'", text);
  const size_t equals = text.find('=');
  FLAME_CHECK(equals != std::string::npos,
              "{}: an override must be section.key=value (e.g. --set optimizer.lr=3e-4), but it has no '='", where);
  const std::string dotted = trim(std::string_view(text).substr(0, equals));
  const std::string value = trim(std::string_view(text).substr(equals + 1));
  FLAME_CHECK(!dotted.empty(), "{}: the key before '=' is empty; an override is section.key=value", where);

  const size_t dot = dotted.find('.');
  if (dot == std::string::npos) fail_top_level_key(dotted, where);
  const std::string section = dotted.substr(0, dot);
  const std::string key = dotted.substr(dot + 1);
  const SectionKeys* known = find_section(section);
  if (known == nullptr) fail_unknown_section(section, where);
  if (!known->has(key)) fail_unknown_key(section, key, where);

  // Note [override values]
  // The value is parsed as the right-hand side of a TOML key ("v = <value>"): 3e-4 is a float, 100
  // an integer, true a boolean, "64" a string. Text that is not one TOML value (cpu, data/x) is
  // taken as a string, so names and paths need no quotes.
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    // Not a TOML value: `parsed` stays empty and the text is taken as a string.
  }
  const bool is_toml_value = parsed.size() == 1 && parsed.contains("v");
  if (!root.contains(section)) root.insert(section, toml::table{});
  toml::table& target = *root.get_as<toml::table>(section);
  if (is_toml_value) {
    target.insert_or_assign(key, std::move(*parsed.get("v")));
  } else {
    target.insert_or_assign(key, value);
  }
  origins.set_override(dotted, text);
}

// --- reading -------------------------------------------------------------------------------------

// Reads each key of the merged table into the Config (a visitor of visit_keys); a key that is
// absent keeps its default.
class Reader {
 public:
  explicit Reader(const Origins& origins) : origins_(origins) {}

  void section(std::string_view name) { section_ = name; }

  void key(std::string_view name, std::string& value, TextRule rule) {
    const toml::node* node = origins_.find(section_, name);
    if (node == nullptr) {
      FLAME_CHECK(rule != TextRule::Required,
                  "{}: {}.{} is missing; it is required ({}): add it under [{}] or pass --set {}.{}=VALUE",
                  origins_.source(), section_, name, describe(rule), section_, section_, name);
      return;
    }
    if (!node->is_string()) {
      // An override's value that TOML reads as a number, a boolean or a date needs quotes.
      const std::string dotted = fmt::format("{}.{}", section_, name);
      fail(name, describe(rule), *node,
           origins_.from_override(dotted)
               ? fmt::format(" (to pass it as a string, quote it: --set '{}=\"...\"')", dotted)
               : "");
    }
    const std::string& text = node->as_string()->get();
    if (!allows(rule, text)) fail(name, describe(rule), *node);
    value = text;
  }

  template <class Int>
  requires std::is_integral_v<Int>
  void key(std::string_view name, Int& value, const IntRange& range) {
    const toml::node* node = origins_.find(section_, name);
    if (node == nullptr) return;
    if (!node->is_integer() || !range.contains(node->as_integer()->get())) fail(name, range.describe(), *node);
    value = static_cast<Int>(node->as_integer()->get());
  }

  void key(std::string_view name, double& value, const FloatRange& range) {
    const toml::node* node = origins_.find(section_, name);
    if (node == nullptr) return;
    double number = 0.0;
    if (node->is_integer()) {
      number = static_cast<double>(node->as_integer()->get());
    } else if (node->is_floating_point()) {
      number = node->as_floating_point()->get();
    } else {
      fail(name, range.describe(), *node);
    }
    if (!range.contains(number)) fail(name, range.describe(), *node);
    value = number;
  }

  void key(std::string_view name, bool& value) {
    const toml::node* node = origins_.find(section_, name);
    if (node == nullptr) return;
    if (!node->is_boolean()) fail(name, "a boolean (true or false)", *node);
    value = node->as_boolean()->get();
  }

  template <class E>
  requires std::is_enum_v<E>
  void key(std::string_view name, E& value) {
    const toml::node* node = origins_.find(section_, name);
    if (node == nullptr) return;
    const std::string allowed = "one of " + quoted_names<E>();
    if (!node->is_string()) fail(name, allowed, *node);
    for (const auto& entry : names_of(E{})) {
      if (entry.name == node->as_string()->get()) {
        value = entry.value;
        return;
      }
    }
    fail(name, allowed, *node);
  }

 private:
  // "name.toml:7:14: train.batch_size must be an integer in 1..1048576, got a string \"64\"".
  [[noreturn]] void fail(std::string_view name, const std::string& allowed, const toml::node& node,
                         const std::string& hint = "") const {
    FLAME_FAIL("{}: {}.{} must be {}, got {}{}", origins_.where(section_, name), section_, name, allowed,
               describe_node(node), hint);
  }

  const Origins& origins_;
  std::string_view section_;
};

// The rules that involve several keys.
void check_key_combinations(const Config& c, const Origins& o) {
  FLAME_CHECK((c.train.steps > 0) != (c.train.epochs > 0),
              "{}: exactly one of train.steps and train.epochs must be > 0 (the other 0), got {} and {}", o.source(),
              o.show("train", "steps", c.train.steps), o.show("train", "epochs", c.train.epochs));
  FLAME_CHECK(c.schedule.min_lr <= c.optimizer.lr, "{}: schedule.min_lr must be in [0, optimizer.lr], got {} and {}",
              o.source(), o.show("schedule", "min_lr", c.schedule.min_lr), o.show("optimizer", "lr", c.optimizer.lr));
  FLAME_CHECK(!c.optimizer.nesterov || c.optimizer.momentum > 0.0,
              "{}: optimizer.nesterov = true requires optimizer.momentum in (0, 1), got {}", o.source(),
              o.show("optimizer", "momentum", c.optimizer.momentum));
  // With train.epochs the step count is only known once the dataset is open: the trainer checks it.
  if (c.schedule.kind == ScheduleChoice::WarmupCosine && c.train.steps > 0) {
    FLAME_CHECK(c.schedule.warmup_steps <= c.train.steps,
                "{}: schedule.warmup_steps must be in 0..train.steps for warmup_cosine, got {} and {}", o.source(),
                o.show("schedule", "warmup_steps", c.schedule.warmup_steps), o.show("train", "steps", c.train.steps));
  }
}

// --- writing -------------------------------------------------------------------------------------

// A TOML basic string: quotes, backslashes and control characters escaped.
std::string toml_string(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// Writes every key as TOML (a visitor of visit_keys).
class Writer {
 public:
  void section(std::string_view name) { out_ += fmt::format("{}[{}]\n", out_.empty() ? "" : "\n", name); }
  void key(std::string_view name, const std::string& value, TextRule) { line(name, toml_string(value)); }
  template <class Int>
  requires std::is_integral_v<Int>
  void key(std::string_view name, const Int& value, const IntRange&) { line(name, fmt::format("{}", value)); }
  void key(std::string_view name, const double& value, const FloatRange&) { line(name, float_text(value)); }
  void key(std::string_view name, const bool& value) { line(name, value ? "true" : "false"); }
  template <class E>
  requires std::is_enum_v<E>
  void key(std::string_view name, const E& value) { line(name, toml_string(name_of(value))); }
  std::string out_;

 private:
  void line(std::string_view name, const std::string& value) { out_ += fmt::format("{} = {}\n", name, value); }
};

}  // namespace

Config parse_config(std::string_view toml_text, std::string_view source_name,
                    const std::vector<std::string>& overrides) {
  const std::string source(source_name);
  toml::table root;
  try {
    root = toml::parse(toml_text, source);
  } catch (const toml::parse_error& error) {
    FLAME_FAIL("{}: TOML syntax error: {}", location(source, error.source()), error.description());
  }
  check_names(root, source);
  Origins origins(root, source);
  for (const std::string& text : overrides) apply_override(root, text, origins);

  Config config;
  Reader reader(origins);
  visit_keys(reader, config);
  check_key_combinations(config, origins);
  if (config.checkpoint.dir.empty())
    config.checkpoint.dir = (std::filesystem::path(config.log.dir) / "checkpoints").string();
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ignored;
  FLAME_CHECK(!std::filesystem::is_directory(path, ignored), "config file '{}' is a directory, not a TOML file", path);
  std::ifstream in(path, std::ios::binary);
  FLAME_CHECK(in.is_open(), "cannot open config file '{}': {} (flame-train CONFIG.toml takes a TOML file such as {})",
              path, std::strerror(errno), "configs/fashion_mnist_cnn.toml");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, overrides);
}

std::string to_toml(const Config& config) {
  Writer writer;
  visit_keys(writer, config);
  return writer.out_;
}

std::string_view to_string(DeviceChoice device) { return name_of(device); }
std::string_view to_string(OptimizerKind kind) { return name_of(kind); }
std::string_view to_string(ScheduleChoice kind) { return name_of(kind); }
std::string_view to_string(ReduceDtype dtype) { return name_of(dtype); }
std::string_view to_string(AllReduceChoice choice) { return name_of(choice); }
std::string_view to_string(StepMeanChoice choice) { return name_of(choice); }

}  // namespace flame::train
