-- Argo CD health check for vibe.dev/MoEDeployment.
--
-- Reads only what the operator writes (status.observedGeneration and the Ready, Degraded and Drifted
-- conditions, each stamped with the generation it was computed for), never the spec:
--   Progressing  the operator has not reconciled the current generation yet, or Ready is not True and
--                nothing is wrong (the first placement is being computed);
--   Degraded     Degraded=True (an input problem the operator cannot fix: stale or missing GPUProfiles,
--                missing load ConfigMap, too few GPUs, infeasible slots), or Ready=False for a reason
--                that needs a person; the last good placement, if any, stays in service;
--   Healthy      Ready=True for the current generation (Drifted=True is mentioned in the message:
--                the placement is still valid, re-placing was just not worth it yet).
-- Written for Argo CD's Lua (5.1): no integer division, no goto.

local function find(conditions, t)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == t then return c end
  end
  return nil
end

local function msg(c, fallback)
  if c == nil then return fallback end
  local reason = c.reason
  if reason == nil or reason == "" then reason = fallback end
  if c.message ~= nil and c.message ~= "" then return reason .. ": " .. c.message end
  return reason
end

-- Ready=False reasons that are waiting, not failing (everything else counts as Degraded).
local waiting = { Pending = true, Reconciling = true, Progressing = true, Solving = true }

local hs = { status = "Progressing", message = "Waiting for the vibe operator to reconcile" }
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then generation = obj.metadata.generation end
local status = obj.status
if status == nil or status.conditions == nil then return hs end

if status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the vibe operator to observe generation " .. tostring(generation)
  return hs
end

local ready = find(status.conditions, "Ready")
local degraded = find(status.conditions, "Degraded")
local drifted = find(status.conditions, "Drifted")

if ready == nil or (ready.observedGeneration ~= nil and ready.observedGeneration < generation) then
  return hs
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(degraded, "Degraded")
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = msg(ready, "Placement ready")
  if drifted ~= nil and drifted.status == "True" then
    hs.message = hs.message .. " (drifted: " .. msg(drifted, "Drifted") .. ")"
  end
  return hs
end

if ready.status == "False" and (ready.reason == nil or not waiting[ready.reason]) then
  hs.status = "Degraded"
  hs.message = msg(ready, "Not ready")
  return hs
end

hs.message = msg(ready, "Waiting for a placement")
return hs
