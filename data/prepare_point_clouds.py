"""Point-cloud classification sample: open3d's 10 mesh primitives, randomly stretched, rotated and
sampled to 1024 noisy surface points (binary PLY).

    python data/prepare_point_clouds.py   # writes data/sample/shapes/
"""

import numpy as np
import open3d as o3d
from common import SAMPLE, assign_splits, write_manifest

SHAPES = {
    "box": lambda: o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0),
    "sphere": lambda: o3d.geometry.TriangleMesh.create_sphere(0.5),
    "cylinder": lambda: o3d.geometry.TriangleMesh.create_cylinder(0.4, 1.2),
    "cone": lambda: o3d.geometry.TriangleMesh.create_cone(0.5, 1.2),
    "torus": lambda: o3d.geometry.TriangleMesh.create_torus(0.6, 0.2),
    "arrow": lambda: o3d.geometry.TriangleMesh.create_arrow(0.1, 0.2, 0.8, 0.4),
    "icosahedron": lambda: o3d.geometry.TriangleMesh.create_icosahedron(0.6),
    "octahedron": lambda: o3d.geometry.TriangleMesh.create_octahedron(0.6),
    "tetrahedron": lambda: o3d.geometry.TriangleMesh.create_tetrahedron(0.6),
    "mobius": lambda: o3d.geometry.TriangleMesh.create_mobius(twists=1, radius=0.6, width=0.4),
}
PER_CLASS, POINTS = 20, 1024


def main() -> None:
    rng = np.random.default_rng(0)
    o3d.utility.random.seed(0)  # the surface sampling
    out = SAMPLE / "shapes"
    (out / "points").mkdir(parents=True, exist_ok=True)
    items = [name for name in SHAPES for _ in range(PER_CLASS)]
    rows = []
    for i, (name, split) in enumerate(zip(items, assign_splits(items))):
        mesh = SHAPES[name]()
        points = np.asarray(mesh.sample_points_uniformly(POINTS).points)
        points = points - points.mean(0)
        points = points * rng.uniform(0.7, 1.3, size=3)  # stretch each axis
        rotation = o3d.geometry.get_rotation_matrix_from_xyz(rng.uniform(0, 2 * np.pi, size=3))
        points = points @ rotation.T + rng.normal(0, 0.01, size=points.shape)
        cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(points.astype(np.float32)))  # float32 PLY
        path = f"points/{i:03d}_{name}.ply"
        o3d.t.io.write_point_cloud(str(out / path), cloud)
        rows.append({"path": path, "label": name, "split": split})
    write_manifest(out, rows)


if __name__ == "__main__":
    main()
