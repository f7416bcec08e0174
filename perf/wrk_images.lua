-- wrk script: POST the images listed in WRK_IMAGES (one path per line of that
-- file) in turn, so the baseline decodes the same real photos as perf_analyzer sends.
local bodies = {}
local index = 0

function init(args)
  local list = io.open(os.getenv("WRK_IMAGES"))
  for path in list:lines() do
    local f = io.open(path, "rb")
    bodies[#bodies + 1] = f:read("*all")
    f:close()
  end
  list:close()
end

function request()
  index = index % #bodies + 1
  return wrk.format("POST", "/predict", {["Content-Type"] = "application/octet-stream"}, bodies[index])
end

function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"errors\": %d, \"seconds\": %.3f, \"p50_us\": %d, \"p99_us\": %d}\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
