// Worker threads: O_DIRECT reads (buffered where refused), xxh3 per chunk as it lands.
#include "engine.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "xxh3.hpp"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

namespace sllm {
namespace {

constexpr uint64_t kAlign = 4096;
// One pread never asks for more than this (Linux caps a read at ~2 GiB anyway).
constexpr uint64_t kMaxRead = 64ULL << 20;

bool aligned(uint64_t v) { return v % kAlign == 0; }

template <class Pred>
bool wait_for(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, double timeout_s,
              Pred pred) {
  if (timeout_s < 0) {
    cv.wait(lock, pred);
    return true;
  }
  return cv.wait_for(lock, std::chrono::duration<double>(timeout_s), pred);
}

}  // namespace

Task::Task(TaskSpec spec) : spec_(std::move(spec)), files_(spec_.paths.size()) {
  for (uint32_t i = 0; i < spec_.nslots; ++i) free_slots_.push_back(spec_.nslots - 1 - i);
}

Task::~Task() {
  cancel();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  for (auto& f : files_) {
    if (f.fd_direct >= 0) ::close(f.fd_direct);
    if (f.fd_buffered >= 0) ::close(f.fd_buffered);
  }
}

bool Task::open_files() {
  if (spec_.mode == Mode::kMemory) return true;
  for (uint32_t i = 0; i < files_.size(); ++i) {
    File& f = files_[i];
    const char* path = spec_.paths[i].c_str();
    f.fd_buffered = ::open(path, O_RDONLY | O_CLOEXEC);
    if (f.fd_buffered < 0) {
      fail(ErrKind::kOpen, i, 0, errno);
      return false;
    }
    if (spec_.direct[i]) {
      // Filesystems without O_DIRECT refuse it here (EINVAL): read buffered.
      f.fd_direct = ::open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
      f.direct_ok.store(f.fd_direct >= 0);
    } else {
      // Reading the whole file once: let the kernel read ahead generously.
      ::posix_fadvise(f.fd_buffered, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
  }
  return true;
}

void Task::start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return;
    started_ = true;
  }
  if (!open_files()) return;
  const size_t n = std::max<size_t>(1, std::min<size_t>(spec_.threads, spec_.jobs.size()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    running_ = spec_.jobs.empty() ? 0 : n;
  }
  if (spec_.jobs.empty()) return;
  threads_.reserve(n);
  for (size_t i = 0; i < n; ++i) threads_.emplace_back(&Task::worker, this);
}

bool Task::wait(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  return wait_for(cv_done_, lock, timeout_s, [this] { return running_ == 0; });
}

void Task::cancel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t n = spec_.jobs.size();
    const bool complete = started_ && completed_.load() == n &&
                          (spec_.mode != Mode::kRing || delivered_ == n);
    // Cancelling a finished load changes nothing; the first real error wins.
    if (complete || error_.kind != ErrKind::kNone) {
      stop_.store(true);
      return;
    }
  }
  fail(ErrKind::kCancelled, 0, 0, 0);
}

ErrorInfo Task::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Task::fail(ErrKind kind, uint32_t file, uint64_t offset, int err, uint64_t expected,
                uint64_t actual) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Only the first failure is reported.
    if (error_.kind == ErrKind::kNone) error_ = ErrorInfo{kind, file, offset, err, expected, actual};
    stop_.store(true);
  }
  cv_slot_.notify_all();
  cv_ready_.notify_all();
  cv_done_.notify_all();
}

bool Task::read_range(const Job& job, uint8_t* dst) {
  File& f = files_[job.file];
  uint64_t done = 0;
  while (done < job.length) {
    if (stopped()) return false;
    const uint64_t want = std::min(job.length - done, kMaxRead);
    const uint64_t pos = job.offset + done;
    const bool direct =
        f.direct_ok.load(std::memory_order_relaxed) && aligned(pos) && aligned(want) &&
        aligned(reinterpret_cast<uintptr_t>(dst + done));
    const ssize_t r = ::pread(direct ? f.fd_direct : f.fd_buffered, dst + done, want,
                              static_cast<off_t>(pos));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct) {
        // The filesystem accepted O_DIRECT at open but refuses this read.
        f.direct_ok.store(false);
        continue;
      }
      fail(ErrKind::kIo, job.file, pos, errno);
      return false;
    }
    if (r == 0) {
      fail(ErrKind::kShortRead, job.file, pos, 0);
      return false;
    }
    if (direct) direct_bytes_.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
    done += static_cast<uint64_t>(r);
  }
  return true;
}

bool Task::fault_in(const Job& job) {
  const uintptr_t start = reinterpret_cast<uintptr_t>(job.dest) & ~(kAlign - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(job.dest) + job.length;
  if (::madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_READ) == 0) return true;
  if (errno == EINVAL) return true;  // no MADV_POPULATE_READ: hashing faults pages in
  // EFAULT: the mapping runs past the end of the file (truncated since stat).
  const ErrKind kind = errno == EFAULT ? ErrKind::kShortRead : ErrKind::kIo;
  fail(kind, job.file, job.offset, errno);
  return false;
}

bool Task::checks(uint32_t file) const {
  // A file given no hashes is not verified (the caller already trusts its bytes).
  return spec_.verify && !spec_.hashes[file].empty();
}

bool Task::verify(const Job& job, const uint8_t* data) {
  if (!checks(job.file)) return true;
  const uint64_t cs = spec_.chunk_size;
  const auto& hashes = spec_.hashes[job.file];
  for (uint64_t off = 0; off < job.length; off += cs) {
    if (stopped()) return false;
    const uint64_t chunk = (job.offset + off) / cs;
    const uint64_t len = std::min(cs, job.length - off);
    const uint64_t got = xxh3_64(data + off, len);
    const uint64_t want = chunk < hashes.size() ? hashes[chunk] : ~got;
    if (got != want) {
      fail(ErrKind::kChecksum, job.file, job.offset + off, 0, want, got);
      return false;
    }
  }
  return true;
}

void Task::worker() {
  for (;;) {
    if (stopped()) break;
    const size_t j = next_job_.fetch_add(1);
    if (j >= spec_.jobs.size()) break;
    const Job& job = spec_.jobs[j];
    if (spec_.mode == Mode::kRead) {
      if (!read_range(job, job.dest) || !verify(job, job.dest)) break;
    } else if (spec_.mode == Mode::kMemory) {
      // Hashing faults the pages in by itself; a separate populate pass would touch the
      // page tables twice (measured ~15% slower on tmpfs).
      if (!(checks(job.file) ? verify(job, job.dest) : fault_in(job))) break;
    } else {
      uint32_t slot = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_slot_.wait(lock, [this] { return stopped() || !free_slots_.empty(); });
        if (stopped()) break;
        slot = free_slots_.back();
        free_slots_.pop_back();
      }
      uint8_t* dst = spec_.ring_base + static_cast<uint64_t>(slot) * spec_.slot_size;
      if (!read_range(job, dst) || !verify(job, dst)) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ready_.emplace_back(static_cast<int64_t>(j), static_cast<int64_t>(slot));
      }
      cv_ready_.notify_one();
    }
    bytes_done_.fetch_add(job.length, std::memory_order_relaxed);
    completed_.fetch_add(1);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
  }
  cv_done_.notify_all();
  cv_ready_.notify_all();
}

std::pair<int64_t, int64_t> Task::next_ready(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool ok = wait_for(cv_ready_, lock, timeout_s, [this] {
    return stopped() || !ready_.empty() || delivered_ == spec_.jobs.size() || running_ == 0;
  });
  if (!ok) return {-2, -2};
  if (stopped() || ready_.empty()) return {-1, -1};
  auto r = ready_.front();
  ready_.pop_front();
  ++delivered_;
  return r;
}

void Task::release(uint32_t slot) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot < spec_.nslots) free_slots_.push_back(slot);
  }
  cv_slot_.notify_one();
}

}  // namespace sllm
