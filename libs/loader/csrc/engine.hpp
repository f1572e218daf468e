// The multi-threaded read engine: aligned chunk reads, checksums, cancellation.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace sllm {

// What the engine does with each job's bytes.
enum class Mode : int {
  kRead = 0,    // pread the file range into job.dest
  kMemory = 1,  // the range is already mapped at job.dest: fault it in, verify
  kRing = 2,    // pread into a free staging slot, hand the slot to the consumer
};

enum class ErrKind : int {
  kNone = 0,
  kOpen = 1,       // open() failed (errno says why; ENOENT: missing partition)
  kShortRead = 2,  // end of file before the range was complete
  kIo = 3,         // read or fault-in failed
  kChecksum = 4,   // a chunk's xxh3 differs from the index
  kCancelled = 5,
};

struct Job {
  uint32_t file;
  uint64_t offset;  // in the file; a multiple of the chunk size
  uint64_t length;  // whole chunks, or up to the end of the partition
  uint8_t* dest;    // unused in ring mode
};

struct ErrorInfo {
  ErrKind kind = ErrKind::kNone;
  uint32_t file = 0;
  uint64_t offset = 0;
  int err = 0;
  uint64_t expected = 0;
  uint64_t actual = 0;
};

struct TaskSpec {
  std::vector<std::string> paths;
  std::vector<bool> direct;                   // per file: try O_DIRECT
  std::vector<std::vector<uint64_t>> hashes;  // per file: one xxh3 per chunk (empty: trusted)
  uint64_t chunk_size = 0;
  std::vector<Job> jobs;
  int threads = 1;
  bool verify = true;
  Mode mode = Mode::kRead;
  uint8_t* ring_base = nullptr;  // kRing: nslots slots of slot_size bytes
  uint64_t slot_size = 0;
  uint32_t nslots = 0;
};

// One load. start() spawns the workers and returns; the caller polls
// bytes_done() / wait() (for progress and cancellation hooks in its own
// thread) and, in ring mode, consumes slots with next_ready()/release().
// The first error stops all workers. The destructor cancels and joins, so
// no worker outlives the task (and the memory it writes into).
class Task {
 public:
  explicit Task(TaskSpec spec);
  ~Task();
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  void start();
  bool wait(double timeout_s);  // true once every worker has exited; < 0 waits forever
  void cancel();
  uint64_t bytes_done() const { return bytes_done_.load(std::memory_order_relaxed); }
  uint64_t direct_bytes() const { return direct_bytes_.load(std::memory_order_relaxed); }
  ErrorInfo error() const;

  // Ring mode: (job, slot) of a filled slot; (-1, -1) when no more will come
  // (all delivered, error or cancel); (-2, -2) on timeout.
  std::pair<int64_t, int64_t> next_ready(double timeout_s);
  void release(uint32_t slot);

 private:
  struct File {
    int fd_direct = -1;
    int fd_buffered = -1;
    std::atomic<bool> direct_ok{false};
  };

  void worker();
  bool open_files();
  bool read_range(const Job& job, uint8_t* dst);
  bool fault_in(const Job& job);
  bool checks(uint32_t file) const;
  bool verify(const Job& job, const uint8_t* data);
  void fail(ErrKind kind, uint32_t file, uint64_t offset, int err, uint64_t expected = 0,
            uint64_t actual = 0);
  bool stopped() const { return stop_.load(std::memory_order_relaxed); }

  TaskSpec spec_;
  std::vector<File> files_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> next_job_{0};
  std::atomic<size_t> completed_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> bytes_done_{0};
  std::atomic<uint64_t> direct_bytes_{0};
  bool started_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_done_;
  std::condition_variable cv_slot_;
  std::condition_variable cv_ready_;
  size_t running_ = 0;
  ErrorInfo error_;
  std::vector<uint32_t> free_slots_;
  std::deque<std::pair<int64_t, int64_t>> ready_;
  size_t delivered_ = 0;
};

}  // namespace sllm
