// A sampling profiler of one program's main thread, loaded with LD_PRELOAD (docs/PERFORMANCE.md,
// sixteenth run: where the cnn's host time went). Every FLAME_SAMPLER_NS nanoseconds of the main
// thread's CPU time (default 50000; in practice the scheduler's tick, a few ms) it records the call
// stack; at exit it writes the stacks and /proc/self/maps to FLAME_SAMPLER_OUT.<pid>.
// host_sampler_report.py turns that file into inclusive and self shares per function.
// A CPU-time clock, not a wall clock: a wall-clock signal every 50 us restarted some blocking calls
// forever and hung the benchmark. Only processes whose executable path contains FLAME_SAMPLER_EXE are
// sampled (mpirun and the other processes the preload reaches are not).
//   g++ -O2 -shared -fPIC -o /tmp/libhost_sampler.so bench/experiments/host_sampler.cpp
//   mpirun -np 1 -x LD_PRELOAD=/tmp/libhost_sampler.so -x FLAME_SAMPLER_OUT=/tmp/samples
//     -x FLAME_SAMPLER_EXE=ddp_scaling_bench build-gpu/bench/ddp_scaling_bench --model cnn --step bucket
//   (one command line)
//   python3 bench/experiments/host_sampler_report.py /tmp/samples.<pid> "::time_phases|::median_ms"
#include <execinfo.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
namespace {
constexpr int kDepth = 64;
constexpr size_t kMax = 200000;
void* frames[kMax][kDepth];
int depths[kMax];
std::atomic<size_t> count{0};
timer_t timer;
const char* out_path = nullptr;
void on_sample(int) {
  const size_t i = count.fetch_add(1);
  if (i < kMax) depths[i] = backtrace(frames[i], kDepth);
}
void dump() {
  if (!out_path) return;
  timer_delete(timer);
  FILE* f = std::fopen(out_path, "w");
  if (!f) return;
  const size_t n = count.load() < kMax ? count.load() : kMax;
  for (size_t i = 0; i < n; ++i) {
    std::fprintf(f, "S");
    for (int d = 2; d < depths[i]; ++d) std::fprintf(f, " %p", frames[i][d]);
    std::fprintf(f, "\n");
  }
  FILE* maps = std::fopen("/proc/self/maps", "r");
  char line[4096];
  while (maps && std::fgets(line, sizeof line, maps)) std::fprintf(f, "M %s", line);
  if (maps) std::fclose(maps);
  std::fclose(f);
  out_path = nullptr;
}
__attribute__((constructor)) void start() {
  const char* base = std::getenv("FLAME_SAMPLER_OUT");
  const char* exe = std::getenv("FLAME_SAMPLER_EXE");
  if (!base || !exe) return;
  char self[4096] = {0};
  if (readlink("/proc/self/exe", self, sizeof self - 1) <= 0 || !std::strstr(self, exe)) return;
  static char path[4200];
  std::snprintf(path, sizeof path, "%s.%d", base, static_cast<int>(getpid()));
  out_path = path;
  void* warm[4];
  backtrace(warm, 4);  // loads the unwinder before the first signal
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sample;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGRTMIN + 3, &sa, nullptr);
  struct sigevent sev;
  std::memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGRTMIN + 3;
  sev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
  timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &timer);  // CPU time: a blocked thread is never interrupted
  const long interval_ns = std::getenv("FLAME_SAMPLER_NS") ? std::atol(std::getenv("FLAME_SAMPLER_NS")) : 50000;
  struct itimerspec spec{{0, interval_ns}, {0, interval_ns}};
  timer_settime(timer, 0, &spec, nullptr);
  std::atexit(dump);
}
__attribute__((destructor)) void stop() { dump(); }
}  // namespace
