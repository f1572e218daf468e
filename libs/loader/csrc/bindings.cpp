// pybind11 bindings: the only file that knows about Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine.hpp"
#include "memory.hpp"
#include "xxh3.hpp"

namespace py = pybind11;
using sllm::Buffer;
using sllm::PoolState;
using sllm::Task;

namespace {

using U64Array = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;

std::unique_ptr<Task> make_task(std::vector<std::string> paths, std::vector<bool> direct,
                                std::vector<U64Array> hashes, uint64_t chunk_size,
                                const U64Array& jobs, int threads, bool verify, int mode,
                                uint64_t ring_base, uint64_t slot_size, uint32_t nslots) {
  sllm::TaskSpec spec;
  const size_t nfiles = paths.size();
  if (direct.size() != nfiles || hashes.size() != nfiles) {
    throw py::value_error("paths, direct and hashes must have one entry per file");
  }
  if (mode < 0 || mode > 2) throw py::value_error("unknown mode");
  if (chunk_size == 0 || chunk_size % 4096 != 0) throw py::value_error("bad chunk_size");
  if (jobs.ndim() != 2 || jobs.shape(1) != 4) throw py::value_error("jobs must be (n, 4)");
  spec.paths = std::move(paths);
  spec.direct = std::move(direct);
  for (const auto& h : hashes) {
    spec.hashes.emplace_back(h.data(), h.data() + h.size());
  }
  spec.chunk_size = chunk_size;
  const auto j = jobs.unchecked<2>();
  for (py::ssize_t i = 0; i < j.shape(0); ++i) {
    if (j(i, 0) >= nfiles) throw py::value_error("job names an unknown file");
    if (j(i, 1) % chunk_size != 0) throw py::value_error("job offset is not chunk aligned");
    spec.jobs.push_back(sllm::Job{static_cast<uint32_t>(j(i, 0)), j(i, 1), j(i, 2),
                                  reinterpret_cast<uint8_t*>(j(i, 3))});
  }
  spec.threads = std::max(1, std::min(threads, 1024));
  spec.verify = verify;
  spec.mode = static_cast<sllm::Mode>(mode);
  spec.ring_base = reinterpret_cast<uint8_t*>(ring_base);
  spec.slot_size = slot_size;
  spec.nslots = nslots;
  if (spec.mode == sllm::Mode::kRing) {
    if (nslots == 0 || ring_base == 0) throw py::value_error("ring mode needs slots");
    for (const auto& job : spec.jobs) {
      if (job.length > slot_size) throw py::value_error("job larger than a staging slot");
    }
  }
  return std::make_unique<Task>(std::move(spec));
}

py::object error_tuple(const Task& t) {
  const sllm::ErrorInfo e = t.error();
  if (e.kind == sllm::ErrKind::kNone) return py::none();
  return py::make_tuple(static_cast<int>(e.kind), e.file, e.offset, e.err, e.expected, e.actual);
}

uint64_t hash_buffer(const py::object& obj, int kernel) {
  Py_buffer view;
  // PyBUF_SIMPLE: only contiguous bytes are accepted.
  if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
  uint64_t out = 0;
  bool ok = true;
  {
    py::gil_scoped_release nogil;
    const auto len = static_cast<size_t>(view.len);
    if (kernel < 0) {
      out = sllm::xxh3_64(view.buf, len);
    } else {
      ok = sllm::xxh3_64_kernel(view.buf, len, kernel, &out);
    }
  }
  PyBuffer_Release(&view);
  if (!ok) throw py::value_error("this CPU lacks that kernel");
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "sllm loader engine: threaded O_DIRECT reads, xxh3 checksums, host memory";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const sllm::OsError& e) {
      py::object exc = py::module_::import("builtins").attr("OSError")(
          e.err, std::string(std::strerror(e.err)), e.what);
      PyErr_SetObject(PyExc_OSError, exc.ptr());
    }
  });

  m.def("xxh3_64", &hash_buffer, py::arg("data"), py::arg("kernel") = -1,
        "XXH3-64 (seed 0) of a buffer; kernel 0/1/2 forces scalar/SSE2/AVX2.");
  m.def("residency", &sllm::residency, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
        "(bytes of the file in the page cache, file size).");
  m.def("is_resident", &sllm::is_resident, py::arg("path"), py::arg("fraction"),
        py::call_guard<py::gil_scoped_release>(),
        "Whether at least `fraction` of the file is in the page cache (stops early).");
  m.def("fs_magic", &sllm::fs_magic, py::arg("path"), "statfs f_type of path's filesystem.");
  m.def("exchange_paths", &sllm::exchange_paths, py::arg("a"), py::arg("b"),
        "Atomically swap two paths (renameat2 RENAME_EXCHANGE).");

  py::class_<Buffer, std::shared_ptr<Buffer>>(m, "Buffer", py::buffer_protocol())
      .def_static("anonymous", &Buffer::anonymous, py::arg("size"), py::arg("hugepage") = true,
                  py::call_guard<py::gil_scoped_release>())
      .def_static("map_files", &Buffer::map_files, py::arg("paths"), py::arg("sizes"),
                  py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("address",
                             [](const Buffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("size", &Buffer::size)
      .def_property_readonly("kind", [](const Buffer& b) { return static_cast<int>(b.kind()); })
      .def(
          "populate",
          [](Buffer& b, bool write, int threads) {
            sllm::populate(b.data(), b.size(), write, threads);
          },
          py::arg("write") = false, py::arg("threads") = 1,
          py::call_guard<py::gil_scoped_release>())
      .def_buffer([](Buffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1});
      });

  py::class_<PoolState, std::shared_ptr<PoolState>>(m, "Pool")
      .def(py::init<size_t, bool, int>(), py::arg("capacity"), py::arg("hugepage") = true,
           py::arg("touch_threads") = 1, py::call_guard<py::gil_scoped_release>())
      .def("alloc", &PoolState::alloc, py::arg("size"))
      .def("close", &PoolState::close)
      .def_property_readonly("address",
                             [](const PoolState& p) { return reinterpret_cast<uintptr_t>(p.base()); })
      .def_property_readonly("capacity", &PoolState::capacity)
      .def_property_readonly("used", &PoolState::used)
      .def_property_readonly("largest_free", &PoolState::largest_free)
      .def_property_readonly("regions", &PoolState::regions)
      .def_property_readonly("closed", &PoolState::closed);

  py::class_<Task>(m, "Task")
      .def(py::init(&make_task), py::arg("paths"), py::arg("direct"), py::arg("hashes"),
           py::arg("chunk_size"), py::arg("jobs"), py::arg("threads"), py::arg("verify"),
           py::arg("mode"), py::arg("ring_base") = 0, py::arg("slot_size") = 0,
           py::arg("nslots") = 0)
      .def("start", &Task::start, py::call_guard<py::gil_scoped_release>())
      .def("wait", &Task::wait, py::arg("timeout") = -1.0,
           py::call_guard<py::gil_scoped_release>())
      .def("cancel", &Task::cancel, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("bytes_done", &Task::bytes_done)
      .def_property_readonly("direct_bytes", &Task::direct_bytes)
      .def("error", &error_tuple)
      .def("next_ready", &Task::next_ready, py::arg("timeout") = -1.0,
           py::call_guard<py::gil_scoped_release>())
      .def("release", &Task::release, py::arg("slot"), py::call_guard<py::gil_scoped_release>());
}
