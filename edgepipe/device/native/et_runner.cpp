// edgepipe's lean ExecuTorch runner: loads a .pte with the C++ runtime the executorch wheel
// ships (no libtorch, no Python), times its forward method and prints one JSON object.
//
//   et_runner PROGRAM [--threads N] [--warmup W] [--runs R] [--min-seconds S]
//             [--shape 1,3,H,W] [--input X.f32] [--output Y.f32]
//             [--etdump OUT.etdp [--profiled-runs P]]
//
// --shape: the first input's shape (a program exported with a dynamic height and width takes
// any up to its bound; default: the shape its metadata gives). --input: float32 values of the
// first input in its logical NCHW order; the runner lays them out in the program's dim order (a
// channels-last program takes [0, 2, 3, 1]). Without it, zeros. --output: the first output's
// float32 values in logical order. A float16 program (an fp16 artifact) takes and gives float16:
// the float32 values are rounded to float16 before any run, and its output widened back to
// float32 for --output. Timing: W warm-up runs, then at least R timed runs, more
// until they add up to S seconds (the agent's Python measurement does the same). Each run is
// Module::execute with the inputs, as the Python bindings' Method.execute is.
// Errors: one line on stderr ("et_runner: error: ..."), exit 2.

#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace executorch::extension::threadpool {
// threadpool.h is not among the wheel's headers; these two are exported by
// libexecutorch_threadpool.so (what the Python bindings' _unsafe_reset_threadpool calls)
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::Half;
using executorch::aten::ScalarType;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using Clock = std::chrono::steady_clock;

namespace {

const char* kVersion = "1";

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "et_runner: error: %s\n", message.c_str());
  std::exit(2);
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

long rss_kb() {  // resident now, from /proc (0 where it cannot be read)
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// The peak resident set of this program itself: VmHWM, the high-water mark of this process's
// memory map. Not getrusage's ru_maxrss, which Linux carries over execve from the process that
// started the runner (a Python parent holding torch would be reported as the runner's peak).
long peak_rss_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;  // not readable here: the host reports it as unknown
}

std::vector<float> read_floats(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail("cannot read --input " + path);
  const auto bytes = static_cast<size_t>(in.tellg());
  if (bytes != count * sizeof(float)) {
    fail("--input " + path + " has " + std::to_string(bytes) + " bytes; the program's input takes " +
         std::to_string(count) + " float32 values (" + std::to_string(count * sizeof(float)) +
         " bytes)");
  }
  std::vector<float> values(count);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(bytes));
  return values;
}

template <typename T>
std::string json_list(const T& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << +values[i];
  out << "]";
  return out.str();
}

struct Args {
  std::string program, input, output, etdump;
  std::vector<int32_t> shape;
  int threads = 1, warmup = 5, runs = 30, profiled_runs = 0;
  double min_seconds = 0.0;
};

Args parse(int argc, char** argv) {
  Args a;
  if (argc < 2) fail("usage: et_runner PROGRAM [--threads N] [--warmup W] [--runs R] "
                     "[--min-seconds S] [--input X.f32] [--output Y.f32] [--etdump F]");
  a.program = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) fail(flag + " needs a value");
    const std::string value = argv[++i];
    try {
      if (flag == "--threads") a.threads = std::stoi(value);
      else if (flag == "--warmup") a.warmup = std::stoi(value);
      else if (flag == "--runs") a.runs = std::stoi(value);
      else if (flag == "--profiled-runs") a.profiled_runs = std::stoi(value);
      else if (flag == "--min-seconds") a.min_seconds = std::stod(value);
      else if (flag == "--input") a.input = value;
      else if (flag == "--shape") {
        std::stringstream parts(value);
        for (std::string part; std::getline(parts, part, ',');) a.shape.push_back(std::stoi(part));
      }
      else if (flag == "--output") a.output = value;
      else if (flag == "--etdump") a.etdump = value;
      else fail("unknown option " + flag);
    } catch (const std::logic_error&) {
      fail(flag + " takes a number, not '" + value + "'");
    }
  }
  if (a.threads < 1 || a.warmup < 0 || a.runs < 1 || a.min_seconds < 0)
    fail("--threads and --runs must be 1 or more, --warmup and --min-seconds 0 or more");
  if (a.profiled_runs <= 0) a.profiled_runs = a.runs;
  return a;
}

// The float32 NCHW values laid out in memory as dim_order says (dim_order[k]: the k-th
// dimension in memory, outermost first; [0, 1, 2, 3] is the logical order itself).
std::vector<float> lay_out(const std::vector<float>& logical, const std::vector<int32_t>& sizes,
                           const std::vector<uint8_t>& dim_order) {
  const size_t n = sizes.size();
  std::vector<size_t> logical_stride(n, 1), memory_stride(n, 1);
  for (size_t d = n; d-- > 1;) logical_stride[d - 1] = logical_stride[d] * sizes[d];
  size_t step = 1;
  for (size_t k = n; k-- > 0;) {
    memory_stride[dim_order[k]] = step;
    step *= sizes[dim_order[k]];
  }
  std::vector<float> out(logical.size());
  std::vector<int32_t> index(n, 0);
  for (size_t i = 0; i < logical.size(); ++i) {
    size_t rest = i, at = 0;
    for (size_t d = 0; d < n; ++d) {
      index[d] = static_cast<int32_t>(rest / logical_stride[d]);
      rest %= logical_stride[d];
      at += index[d] * memory_stride[d];
    }
    out[at] = logical[i];
  }
  return out;
}

struct Input {
  std::vector<int32_t> sizes;
  std::vector<uint8_t> dim_order;
  std::vector<float> data;  // in memory order
  std::vector<Half> half;  // the same, rounded, for a float16 program
  executorch::extension::TensorPtr tensor;
};

std::vector<double> timed(Module& module, const std::vector<EValue>& inputs, int count) {
  std::vector<double> times;
  times.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const auto start = Clock::now();
    const auto result = module.execute("forward", inputs);
    times.push_back(ms_since(start));
    if (!result.ok()) fail("forward failed (error " + std::to_string(int(result.error())) + ")");
  }
  return times;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (access(args.program.c_str(), R_OK) != 0) fail("cannot read program " + args.program);
  const long rss_before = rss_kb();
  executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(
      static_cast<uint32_t>(args.threads));

  const auto load_start = Clock::now();
  Module module(args.program, Module::LoadMode::MmapUseMlockIgnoreErrors);
  if (module.load() != Error::Ok) fail("cannot load " + args.program + ": not an ExecuTorch program, "
                                       "or made by another ExecuTorch version");
  if (module.load_method("forward") != Error::Ok)
    fail("cannot load the forward method of " + args.program +
         " (an operator or backend this runtime lacks?)");
  const double load_ms = ms_since(load_start);
  const long rss_loaded = rss_kb();

  auto meta = module.method_meta("forward");
  if (!meta.ok()) fail("no forward method in " + args.program);
  std::vector<Input> inputs(meta->num_inputs());
  std::vector<EValue> values;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) fail("input " + std::to_string(i) + " is not a tensor");
    const ScalarType type = info->scalar_type();
    if (type != ScalarType::Float && type != ScalarType::Half)
      fail("input " + std::to_string(i) + " is neither float32 nor float16");
    Input& in = inputs[i];
    in.sizes.assign(info->sizes().begin(), info->sizes().end());
    in.dim_order.assign(info->dim_order().begin(), info->dim_order().end());
    if (i == 0 && !args.shape.empty()) {
      if (args.shape.size() != in.sizes.size())
        fail("--shape has " + std::to_string(args.shape.size()) + " dimensions; the input has " +
             std::to_string(in.sizes.size()));
      in.sizes = args.shape;
    }
    size_t count = 1;
    for (auto s : in.sizes) count *= static_cast<size_t>(s);
    std::vector<float> logical = (i == 0 && !args.input.empty())
                                     ? read_floats(args.input, count)
                                     : std::vector<float>(count, 0.0f);
    in.data = lay_out(logical, in.sizes, in.dim_order);
    if (type == ScalarType::Half) {
      in.half.assign(in.data.begin(), in.data.end());
      in.tensor = executorch::extension::make_tensor_ptr(in.sizes, in.half.data(), in.dim_order,
                                                         {}, ScalarType::Half);
    } else {
      in.tensor = executorch::extension::make_tensor_ptr(in.sizes, in.data.data(), in.dim_order,
                                                         {}, ScalarType::Float);
    }
    values.emplace_back(in.tensor);
  }

  timed(module, values, args.warmup);
  std::vector<double> times;
  const auto wall_start = Clock::now();
  double span_ms = 0;
  while (static_cast<int>(times.size()) < args.runs || span_ms < args.min_seconds * 1000) {
    for (double t : timed(module, values, 1)) {
      times.push_back(t);
      span_ms += t;
    }
  }
  const double wall_ms = ms_since(wall_start);

  auto outputs = module.execute("forward", values);
  if (!outputs.ok()) fail("forward failed");
  std::string output_json = "[";
  for (size_t i = 0; i < outputs->size(); ++i) {
    const EValue& out = (*outputs)[i];
    if (!out.isTensor()) continue;
    const auto& t = out.toTensor();
    std::vector<int32_t> sizes(t.sizes().begin(), t.sizes().end());
    std::vector<uint8_t> order(t.dim_order().begin(), t.dim_order().end());
    output_json += std::string(i ? ", " : "") + "{\"sizes\": " + json_list(sizes) +
                   ", \"dim_order\": " + json_list(order) + "}";
    const bool half = t.scalar_type() == ScalarType::Half;
    if (i == 0 && !args.output.empty() && (half || t.scalar_type() == ScalarType::Float)) {
      // back to logical order: invert the layout by walking memory positions
      std::vector<float> memory(static_cast<size_t>(t.numel()));
      for (size_t k = 0; k < memory.size(); ++k)
        memory[k] = half ? static_cast<float>(t.const_data_ptr<Half>()[k])
                         : t.const_data_ptr<float>()[k];
      std::vector<float> logical(memory.size());
      std::vector<float> probe(memory.size());
      for (size_t k = 0; k < probe.size(); ++k) probe[k] = static_cast<float>(k);
      const auto where = lay_out(probe, sizes, order);  // where[at] = logical index
      for (size_t at = 0; at < memory.size(); ++at)
        logical[static_cast<size_t>(where[at])] = memory[at];
      std::ofstream file(args.output, std::ios::binary);
      file.write(reinterpret_cast<const char*>(logical.data()),
                 static_cast<std::streamsize>(logical.size() * sizeof(float)));
      if (!file) fail("cannot write --output " + args.output);
    }
  }
  output_json += "]";

  std::string etdump_json = "null";
  if (!args.etdump.empty()) {
    auto tracer = std::make_unique<executorch::etdump::ETDumpGen>();
    auto* gen = tracer.get();
    Module profiled(args.program, Module::LoadMode::MmapUseMlockIgnoreErrors, std::move(tracer));
    if (profiled.load_method("forward") != Error::Ok) fail("cannot load forward with ETDump");
    const auto profiled_times = timed(profiled, values, args.profiled_runs);
    const auto dump = gen->get_etdump_data();
    if (dump.buf == nullptr || dump.size == 0) fail("the ETDump is empty");
    std::ofstream file(args.etdump, std::ios::binary);
    file.write(static_cast<const char*>(dump.buf), static_cast<std::streamsize>(dump.size));
    std::free(dump.buf);
    if (!file) fail("cannot write --etdump " + args.etdump);
    etdump_json = "{\"file\": \"" + args.etdump + "\", \"profiled_ms\": " +
                  json_list(profiled_times) + "}";
  }

  std::printf(
      "{\"runner\": \"edgepipe-et-runner\", \"version\": %s, \"threads\": %d, "
      "\"threadpool_threads\": %zu, \"load_ms\": %.4f, \"rss_before_load_kb\": %ld, "
      "\"rss_loaded_kb\": %ld, \"peak_rss_kb\": %ld, \"wall_ms\": %.4f, \"inputs\": [",
      kVersion, args.threads,
      executorch::extension::threadpool::get_threadpool()->get_thread_count(), load_ms,
      rss_before, rss_loaded, peak_rss_kb(), wall_ms);
  for (size_t i = 0; i < inputs.size(); ++i)
    std::printf("%s{\"sizes\": %s, \"dim_order\": %s}", i ? ", " : "",
                json_list(inputs[i].sizes).c_str(), json_list(inputs[i].dim_order).c_str());
  std::printf("], \"outputs\": %s, \"etdump\": %s, \"times_ms\": %s}\n", output_json.c_str(),
              etdump_json.c_str(), json_list(times).c_str());
  return 0;
}
