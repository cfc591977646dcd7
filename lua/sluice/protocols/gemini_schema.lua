-- sluice.protocols.gemini_schema — tool and response schemas between JSON
-- Schema (what every other protocol and the IR carry) and Gemini's OpenAPI
-- subset, both ways. Used by the Gemini codec only; pure Lua.
--
--   G.to_gemini(json_schema) -> gemini schema | nil (a function without parameters)
--   G.from_gemini(gemini_schema) -> json schema

local json = require("sluice.json")

local type, pairs, ipairs, next = type, pairs, ipairs, next
local concat, upper, lower = table.concat, string.upper, string.lower
local json_encode, json_array, json_null, is_array = json.encode, json.array, json.null, json.is_array

local G = {}

local function is_str(v) return type(v) == "string" end
local function is_obj(v) return type(v) == "table" and not is_array(v) end


-- Gemini `parameters` take an OpenAPI subset; anything else is a 400
-- ("Unknown name ..."). These keywords survive; $ref is inlined, const
-- becomes a one-value enum, type arrays become nullable / anyOf, oneOf
-- becomes anyOf, allOf is merged. Everything else ($schema,
-- additionalProperties, exclusiveMinimum, patternProperties, default, ...)
-- is dropped, never the schema around it.
local COPY_NUM = { "minItems", "maxItems", "minimum", "maximum" }
local FORMATS = {
    STRING = { ["date-time"] = true, enum = true },
    INTEGER = { int32 = true, int64 = true }, NUMBER = { float = true, double = true },
}
local MAX_DEPTH = 24

local to_gemini

local function merge_into(out, other)
    for k, v in pairs(other) do
        if k == "properties" and out.properties then
            for pk, pv in pairs(v) do
                if out.properties[pk] == nil then out.properties[pk] = pv end
            end
        elseif k == "required" and out.required then
            for _, r in ipairs(v) do out.required[#out.required + 1] = r end
        elseif out[k] == nil then
            out[k] = v
        end
    end
end

local function resolve_ref(ref, ctx)
    local name = ref:match("^#/%$defs/(.+)$") or ref:match("^#/definitions/(.+)$")
    return name, name and ctx.defs and ctx.defs[name]
end

local function convert_anyof(list, out, ctx, depth)
    local alts = json_array({})
    for _, alt in ipairs(list) do
        if is_obj(alt) and alt.type == "null" then
            out.nullable = true
        else
            alts[#alts + 1] = to_gemini(alt, ctx, depth + 1)
        end
    end
    if #alts == 1 then merge_into(out, alts[1]) elseif #alts > 1 then out.anyOf = alts end
end

local function convert_enum(s, out)
    local vals, all_str = json_array({}), true
    local src = s.enum
    if s.const ~= nil and s.const ~= json_null then src = { s.const } end
    if type(src) ~= "table" then return end
    for _, v in ipairs(src) do
        if is_str(v) then vals[#vals + 1] = v elseif v ~= json_null then all_str = false end
    end
    if all_str and #vals > 0 and (out.type == nil or out.type == "STRING") then
        out.enum = vals
        out.type = "STRING"
    else
        -- Gemini enums are strings only: keep the allowed values as a hint.
        local t = {}
        for _, v in ipairs(src) do t[#t + 1] = json_encode(v) end
        local hint = "Allowed values: " .. concat(t, ", ")
        out.description = out.description and (out.description .. " (" .. hint .. ")") or hint
    end
end

function to_gemini(s, ctx, depth)
    if not is_obj(s) then return {} end
    if depth > MAX_DEPTH then return { type = "OBJECT" } end
    local out = {}
    if is_str(s["$ref"]) then
        local name, target = resolve_ref(s["$ref"], ctx)
        if target and not ctx.seen[name] then
            ctx.seen[name] = true
            out = to_gemini(target, ctx, depth + 1)
            ctx.seen[name] = nil
        else
            out = { type = "OBJECT" } -- recursive or external: a free-form object
        end
        if is_str(s.description) then out.description = s.description end
        return out
    end
    local t = s.type
    if type(t) == "table" then
        local kinds = {}
        for _, k in ipairs(t) do
            if k == "null" then out.nullable = true elseif is_str(k) then kinds[#kinds + 1] = k end
        end
        if #kinds == 1 then
            t = kinds[1]
        else
            t = nil
            if #kinds > 1 then
                out.anyOf = json_array({})
                for _, k in ipairs(kinds) do out.anyOf[#out.anyOf + 1] = { type = upper(k) } end
            end
        end
    end
    if t == "null" then out.nullable = true; t = nil end
    if is_str(t) then out.type = upper(t) end
    if s.nullable == true then out.nullable = true end
    if is_str(s.description) then out.description = s.description end
    if s.enum ~= nil or s.const ~= nil then convert_enum(s, out) end
    if is_str(s.format) and out.type and FORMATS[out.type] and FORMATS[out.type][s.format] then
        out.format = s.format
    end
    for _, k in ipairs(COPY_NUM) do
        if type(s[k]) == "number" then out[k] = s[k] end
    end
    if is_obj(s.properties) and next(s.properties) ~= nil then
        out.properties = {}
        for k, v in pairs(s.properties) do out.properties[k] = to_gemini(v, ctx, depth + 1) end
        if type(s.required) == "table" then
            local req = json_array({})
            for _, r in ipairs(s.required) do
                if out.properties[r] then req[#req + 1] = r end
            end
            if #req > 0 then out.required = req end
        end
    end
    if type(s.items) == "table" then
        local it = is_array(s.items) and s.items[1] or s.items
        out.items = to_gemini(it, ctx, depth + 1)
    end
    local alts = s.anyOf or s.oneOf
    if type(alts) == "table" then convert_anyof(alts, out, ctx, depth) end
    if type(s.allOf) == "table" then
        for _, sub in ipairs(s.allOf) do merge_into(out, to_gemini(sub, ctx, depth + 1)) end
    end
    if out.type == nil and out.anyOf == nil then
        if out.properties then out.type = "OBJECT" elseif out.items then out.type = "ARRAY" end
    end
    -- An ARRAY without items is rejected ("items: missing field").
    if out.type == "ARRAY" and out.items == nil then out.items = { type = "STRING" } end
    return out
end

-- JSON Schema -> Gemini parameters; nil for a function without parameters
-- (Gemini rejects an OBJECT with empty properties).
function G.to_gemini(schema)
    if not is_obj(schema) then return nil end
    local defs = schema["$defs"] or schema.definitions
    local out = to_gemini(schema, { defs = is_obj(defs) and defs or nil, seen = {} }, 0)
    out.type = out.type or "OBJECT"
    if out.type == "OBJECT" and out.properties == nil and out.anyOf == nil then return nil end
    return out
end

-- Gemini Schema (upper-case types, nullable) -> JSON Schema for other
-- protocols. Also applied to responseJsonSchema / parametersJsonSchema:
-- JSON Schema by contract, yet Gemini CLI fills them with OpenAPI's
-- upper-case types; on lower-case JSON Schema it changes nothing.
local function from_gemini(s, depth)
    if type(s) ~= "table" or depth > MAX_DEPTH then return s end
    if is_array(s) then
        local a = json_array({})
        for i, v in ipairs(s) do a[i] = from_gemini(v, depth + 1) end
        return a
    end
    local out = {}
    for k, v in pairs(s) do
        if k == "type" and is_str(v) then
            out.type = lower(v)
        elseif k == "properties" and type(v) == "table" then
            out.properties = {}
            for pk, pv in pairs(v) do out.properties[pk] = from_gemini(pv, depth + 1) end
        elseif k ~= "nullable" and k ~= "propertyOrdering" then
            out[k] = from_gemini(v, depth + 1)
        end
    end
    if s.nullable == true and is_str(out.type) then out.type = json_array({ out.type, "null" }) end
    return out
end

-- Gemini Schema -> JSON Schema (see from_gemini above).
function G.from_gemini(schema)
    return from_gemini(schema, 0)
end

return G
