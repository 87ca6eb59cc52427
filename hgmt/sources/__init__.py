"""Where the data comes from: SURREAL's files (`surreal`), the body labels and camera they hold
(`body`, `camera`), which of their frames count (`frame_selection`), the references' crop
(`reference_crop`), and demo clips written in their format (`synthetic`, the person they show
`synthetic_person`)."""
