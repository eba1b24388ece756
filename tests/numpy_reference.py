"""Independent float64 NumPy references for the objectives, written from docs/objectives.md (loops where it is
clearer)."""

import numpy as np


def normalize(x, eps):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def koleo(x):
  """−mean_i log(||x̂_i − x̂_j(i) + 1e-8|| + 1e-8), j(i) = argmax_{j≠i} x̂_i·x̂_j."""
  x = normalize(x, 1e-8)
  n = x.shape[0]
  total = 0.0
  for i in range(n):
    best_j, best_dot = -1, -np.inf
    for j in range(n):
      if j != i and x[i] @ x[j] > best_dot:
        best_j, best_dot = j, x[i] @ x[j]
    total += np.log(np.linalg.norm(x[i] - x[best_j] + 1e-8) + 1e-8)
  return -total / n


def nearest_neighbour_gap(x):
  """Smallest gap, over rows, between the best and second-best similarity (to avoid near-ties in tests)."""
  x = normalize(x, 1e-8)
  sims = x @ x.T
  np.fill_diagonal(sims, -np.inf)
  top2 = np.sort(sims, axis=1)[:, -2:]
  return float(np.min(top2[:, 1] - top2[:, 0]))


def unique_prototype_groups(prototypes, threshold):
  """(number of connected components, largest component) of the graph ||v̂_i − v̂_j|| < threshold (BFS)."""
  x = normalize(prototypes, 1e-8)
  k = x.shape[0]
  distances = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
  adjacent = distances < threshold
  component = -np.ones(k, int)
  sizes = []
  for start in range(k):
    if component[start] >= 0:
      continue
    component[start] = len(sizes)
    stack, size = [start], 0
    while stack:
      node = stack.pop()
      size += 1
      for neighbour in np.nonzero(adjacent[node] & (component < 0))[0]:
        component[neighbour] = len(sizes)
        stack.append(neighbour)
    sizes.append(size)
  return len(sizes), max(sizes)


def coding_rate(z, eps):
  """½ logdet(I_p + p/(n·eps) ZᵀZ), always with the p×p matrix and slogdet (LU)."""
  z = np.asarray(z, np.float64)
  n, p = z.shape
  sign, logdet = np.linalg.slogdet(np.eye(p) + p / (n * eps) * z.T @ z)
  assert sign > 0
  return 0.5 * logdet


def coding_rate_gradient(z, eps):
  """∇_Z R = α Z (I + α ZᵀZ)⁻¹."""
  z = np.asarray(z, np.float64)
  n, p = z.shape
  alpha = p / (n * eps)
  return alpha * z @ np.linalg.inv(np.eye(p) + alpha * z.T @ z)


def softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def sinkhorn_knopp(logits, temperature, n_iterations=3):
  """DINOv2's loop on Q = exp(t/τ)ᵀ (K × B): prototypes get mass 1/K, samples 1/B; returns (B·Q)ᵀ."""
  logits = np.asarray(logits, np.float64)
  q = np.exp((logits - logits.max()) / temperature).T
  k, b = q.shape
  q /= q.sum()
  for _ in range(n_iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def dino_from_probs(student_logits, teacher_probs, student_temp=0.1):
  """Mean over the 2V−2 pairs (i, v≠i) of mean_b −Σ_k p_t,i log_softmax(s_v/τ_s)."""
  student_logits = np.asarray(student_logits, np.float64)
  terms = []
  for i in range(2):
    for v in range(student_logits.shape[0]):
      if v == i:
        continue
      log_p = log_softmax(student_logits[v] / student_temp)
      terms.append(np.mean(-np.sum(teacher_probs[i] * log_p, axis=-1)))
  return float(np.mean(terms))


def dino(student_logits, teacher_logits, center, teacher_temp, student_temp=0.1):
  probs = softmax((np.asarray(teacher_logits, np.float64) - center) / teacher_temp)
  return dino_from_probs(student_logits, probs, student_temp)


def update_center(center, teacher_logits, momentum):
  teacher_logits = np.asarray(teacher_logits, np.float64)
  return momentum * center + (1 - momentum) * teacher_logits.reshape(-1, teacher_logits.shape[-1]).mean(axis=0)


def ibot(student_patch_logits, teacher_patch_probs, masks, student_temp=0.1):
  """−(1/n_images) Σ_i (1/M_i) Σ_{masked j} Σ_k t_ij log_softmax(s_ij/τ)[k]; [n_images, N, K] inputs."""
  student = np.asarray(student_patch_logits, np.float64).reshape(-1, *student_patch_logits.shape[-2:])
  teacher = np.asarray(teacher_patch_probs, np.float64).reshape(student.shape)
  masks = np.asarray(masks).reshape(student.shape[:2])
  total = 0.0
  for image in range(student.shape[0]):
    masked = np.nonzero(masks[image])[0]
    for j in masked:
      total -= np.sum(teacher[image, j] * log_softmax(student[image, j] / student_temp)) / len(masked)
  return total / student.shape[0]


def update_patch_center(center, teacher_patch_logits, masks, momentum):
  logits = np.asarray(teacher_patch_logits, np.float64).reshape(-1, teacher_patch_logits.shape[-1])
  selected = logits[np.asarray(masks).reshape(-1)]
  return momentum * center + (1 - momentum) * selected.mean(axis=0)


def cosine(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def simdino(student_z, teacher_z, eps=0.05, coeff=1.0, expa_type=1, gamma="default", n_devices=1, n=None):
  """(loss, comp, expa) of SimDINO (docs/objectives.md); n_devices > 1: per-device covariance with the global n,
  mean of R;
  n: the global batch of α and γ (default: the rows given)."""
  student_z, teacher_z = np.asarray(student_z, np.float64), np.asarray(teacher_z, np.float64)
  n_views, rows, p = student_z.shape
  n = n or rows
  comp = np.mean([np.mean(cosine(teacher_z[i], student_z[v])) for i in range(2) for v in range(n_views) if v != i])
  rates = []
  for i in range(2):
    codes = (student_z[i] + teacher_z[i]) / 2 if expa_type == 1 else student_z[i]
    alpha = p / (n * eps)
    per_device = []
    for shard in np.split(codes, n_devices):
      per_device.append(0.5 * np.linalg.slogdet(np.eye(p) + alpha * shard.T @ shard)[1])
    rates.append(np.mean(per_device))
  gamma_value = (p + n) / (p * n) if gamma == "default" else np.sqrt(eps * n) / p
  expa = gamma_value * np.mean(rates)
  return -coeff * comp - expa, comp, expa


def simdino_patch(student_patch_z, teacher_patch_z, masks):
  """−(1/n_images) Σ_i (1/M_i) Σ_{masked j} cos(z_t,ij, z_s,ij)."""
  student = np.asarray(student_patch_z, np.float64).reshape(-1, *student_patch_z.shape[-2:])
  teacher = np.asarray(teacher_patch_z, np.float64).reshape(student.shape)
  masks = np.asarray(masks).reshape(student.shape[:2])
  total = 0.0
  for image in range(student.shape[0]):
    masked = np.nonzero(masks[image])[0]
    for j in masked:
      total += cosine(teacher[image, j], student[image, j]) / len(masked)
  return -total / student.shape[0]


def numerical_gradient(f, x, step=1e-6):
  """Central finite differences of a scalar float64 function."""
  x = np.array(x, np.float64)
  gradient = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[index] += step
    minus[index] -= step
    gradient[index] = (f(plus) - f(minus)) / (2 * step)
  return gradient


def assert_close(actual, expected, rtol=1e-5, scale=None):
  """Elementwise |actual − expected| <= rtol·(|expected| + scale): relative error at the array's scale (default
  max|expected|; pass the size of the summed terms where a sum can cancel to near zero)."""
  expected = np.asarray(expected, np.float64)
  if scale is None:
    scale = max(float(np.max(np.abs(expected))), 1e-12) if expected.size else 1.0
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * scale)
